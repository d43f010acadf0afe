import numpy as np
import pytest

from testkit import make_dataset
from vgssl_core.data.dataset import load_split
from vgssl_core.errors import VgsslError
from vgssl_core.data.geopairs import DB_NEGATIVE, QUERY, EpochBatches, GeoPairConfig, GeoPairSampler


@pytest.fixture
def grid_split(tmp_path):
    """Two streets: a 400 m one covered by queries, a 400 m one with database only."""
    db = [(x, 0.0) for x in range(0, 400, 4)] + [(x, 500.0) for x in range(0, 400, 8)]
    q = [(x + 1.5, 2.0) for x in range(0, 400, 7)] + [(5000.0, 5000.0)]  # last one has no positive
    return load_split(make_dataset(tmp_path / "w", db, q, split="train"), "train")


def test_queries_without_positive_are_left_out(grid_split):
    sampler = GeoPairSampler(grid_split, GeoPairConfig())
    assert sampler.n_queries_without_positive == 1
    assert len(grid_split.queries) - 1 not in set(sampler.usable_queries)


def test_every_query_pair_is_within_train_radius(grid_split):
    sampler = GeoPairSampler(grid_split, GeoPairConfig(train_radius_m=10.0))
    for p in sampler.pairs(0):
        if p.kind == QUERY:
            d = np.linalg.norm(grid_split.queries.utm[p.a] - grid_split.database.utm[p.b])
            assert d <= 10.0


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 1.0])
def test_database_negative_ratio(grid_split, r):
    sampler = GeoPairSampler(grid_split, GeoPairConfig(db_negative_ratio=r, queries_per_epoch=40))
    pairs = sampler.pairs(3)
    queries = [p.a for p in pairs if p.kind == QUERY]
    negatives = [p for p in pairs if p.kind == DB_NEGATIVE]
    assert len(queries) == 40 and len(negatives) == round(r * 40)
    assert sorted(queries) == sorted(sampler.epoch_queries(3).tolist())
    # negatives lie beyond 25 m of this epoch's sampled queries (not of every training query)
    q_utm = grid_split.queries.utm[queries]
    for p in negatives:
        assert p.a == p.b
        assert np.min(np.linalg.norm(q_utm - grid_split.database.utm[p.a], axis=1)) > 25.0


def test_negatives_may_lie_near_queries_not_sampled_this_epoch(grid_split):
    sampler = GeoPairSampler(grid_split, GeoPairConfig(db_negative_ratio=1.0, queries_per_epoch=10))
    all_q = grid_split.queries.utm
    near_some_query = [p.a for e in range(3) for p in sampler.pairs(e) if p.kind == DB_NEGATIVE
                       and np.min(np.linalg.norm(all_q - grid_split.database.utm[p.a], axis=1)) <= 25.0]
    assert near_some_query


def test_a_small_pool_gives_all_it_has_and_one_warning(grid_split, caplog):
    # 400 m of database-only street: 50 images; r = 2 over 58 queries asks for 116
    sampler = GeoPairSampler(grid_split, GeoPairConfig(db_negative_ratio=2.0))
    with caplog.at_level("WARNING", logger="vgssl"):
        stats = [sampler.plan(e)[1] for e in range(3)]
    assert all(s.negatives_asked == 116 and s.negatives_delivered == s.negative_pool == 50 for s in stats)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "asks for 116" in warnings[0] and "only 50" in warnings[0]


def test_batches_are_full_and_place_aware_where_possible(grid_split):
    cfg = GeoPairConfig(batch_size=8, db_negative_ratio=0.5)
    sampler = GeoPairSampler(grid_split, cfg)
    batches, stats = sampler.plan(0)
    assert [len(b) for b in batches[:-1]] == [8] * (len(batches) - 1) and 2 <= len(batches[-1]) <= 8
    assert sum(len(b) for b in batches) == len(sampler.pairs(0)) - stats.pairs_dropped
    violations = 0
    for batch in batches:
        a, b = sampler.pair_positions(batch)
        for i in range(len(batch)):
            for j in range(i + 1, len(batch)):
                points_i, points_j = np.stack([a[i], b[i]]), np.stack([a[j], b[j]])
                violations += np.linalg.norm(points_i[:, None] - points_j[None], axis=-1).min() <= cfg.eval_radius_m
    assert violations == stats.same_place_violations
    assert stats.batch_size_min == len(batches[-1]) and stats.batches == len(batches)


def test_pairs_of_one_place_fill_batches_anyway_and_are_counted(tmp_path):
    # one 30 m street: every pair is within 25 m of most others; place-aware batches of 4 cannot exist
    split = load_split(make_dataset(tmp_path / "one", [(x, 0.0) for x in range(0, 30, 2)],
                                    [(x + 1.0, 0.0) for x in range(0, 30, 3)], split="train"), "train")
    sampler = GeoPairSampler(split, GeoPairConfig(batch_size=4, db_negative_ratio=0.0))
    batches, stats = sampler.plan(0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert stats.same_place_violations > 0 and stats.batch_size_min == 2


def test_sampling_is_deterministic_for_a_seed(grid_split):
    plan = lambda seed, epoch: [(p.kind, p.a, p.b, p.seed) for b in GeoPairSampler(grid_split, GeoPairConfig(seed=seed)).batches(epoch) for p in b]
    assert plan(1, 0) == plan(1, 0)
    assert plan(1, 0) != plan(1, 1)
    assert plan(1, 0) != plan(2, 0)


def test_ranks_get_disjoint_equal_shards(grid_split):
    sampler = GeoPairSampler(grid_split, GeoPairConfig(batch_size=4))
    shards = [sampler.shard(0, rank, 3) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [(p.kind, p.a) for s in shards for b in s for p in b]
    assert len(seen) == len(set(seen))
    batches = EpochBatches(sampler, rank=1, world_size=3)
    batches.set_epoch(0)
    assert [[(p.kind, p.a) for p in b] for b in batches] == [[(p.kind, p.a) for p in b] for b in shards[1]]


def test_feature_nearest_picks_most_similar_positive(grid_split):
    sampler = GeoPairSampler(grid_split, GeoPairConfig(positive="feature-nearest"))
    rng = np.random.default_rng(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    q_desc = unit(rng.normal(size=(len(grid_split.queries), 8)))
    db_desc = unit(rng.normal(size=(len(grid_split.database), 8)))
    queries, candidates = sampler.needs_descriptors(0)
    assert set(candidates.tolist()) == {int(d) for q in queries for d in sampler.positives[q]}
    sampler.set_descriptors(0, queries, q_desc[queries], candidates, db_desc[candidates])
    for p in sampler.pairs(0):
        if p.kind == QUERY:
            cands = sampler.positives[p.a]
            assert p.b == cands[np.argmax(db_desc[cands] @ q_desc[p.a])]


def test_kept_descriptors_stand_in_until_they_are_too_old(grid_split):
    # a described or kept descriptor stands in for positive_max_age epochs, then the image is
    # described again; a training step's newer descriptor replaces it (and restarts its age)
    age = 2
    sampler = GeoPairSampler(grid_split, GeoPairConfig(positive="feature-nearest", positive_max_age=age))
    rng = np.random.default_rng(1)
    q_desc = rng.normal(size=(len(grid_split.queries), 8)).astype(np.float32)
    db_desc = rng.normal(size=(len(grid_split.database), 8)).astype(np.float32)
    queries, candidates = sampler.needs_descriptors(0)
    assert len(queries) == len(sampler.usable_queries)
    sampler.set_descriptors(0, queries, q_desc[queries], candidates, db_desc[candidates])
    seen = np.array(sorted({p.b for p in sampler.pairs(0) if p.kind == QUERY}))
    db_desc[seen] = -db_desc[seen]  # training moved them: the newest descriptor must win
    sampler.keep("database", seen, db_desc[seen], 0)
    retouched = seen[: len(seen) // 2]
    described = {"queries": [], "database": []}
    for epoch in range(1, 1 + 2 * (age + 1)):
        if epoch == 1:  # a step of epoch 1 sees half of them again: they expire an epoch later
            sampler.keep("database", retouched, db_desc[retouched], 1)
        q_missing, db_missing = sampler.needs_descriptors(epoch)
        described["queries"].append(set(q_missing.tolist()))
        described["database"].append(set(db_missing.tolist()))
        sampler.set_descriptors(epoch, q_missing, q_desc[q_missing], db_missing, db_desc[db_missing])
        for p in sampler.pairs(epoch):
            if p.kind == QUERY:
                cands = sampler.positives[p.a]
                unit = db_desc[cands] / np.linalg.norm(db_desc[cands], axis=1, keepdims=True)
                assert p.b == cands[np.argmax(unit @ q_desc[p.a])]
    everything_q, everything_db = set(queries.tolist()), set(candidates.tolist())
    later = set(retouched.tolist())
    assert described["queries"] == [set(), set(), everything_q, set(), set(), everything_q]  # epochs 3 and 6
    assert described["database"][:2] == [set(), set()]
    assert described["database"][2] == everything_db - later and described["database"][3] == later
    assert described["database"][4] == set()
    assert described["database"][5] == everything_db - later  # each on its own cycle from then on
    # the kept descriptors travel in the sampler's state (checkpoints): a copy chooses alike
    copy = GeoPairSampler(grid_split, GeoPairConfig(positive="feature-nearest", positive_max_age=age))
    copy.load_state_dict(sampler.state_dict())
    nxt = 2 * (age + 1) + 1
    assert [x.tolist() for x in copy.needs_descriptors(nxt)] == [x.tolist() for x in sampler.needs_descriptors(nxt)]
    assert copy.pairs(nxt - 1) == sampler.pairs(nxt - 1)


def test_uniform_positives_need_no_descriptors(grid_split):
    assert GeoPairSampler(grid_split, GeoPairConfig()).needs_descriptors(0) is None


def test_bad_config_is_a_clear_error(grid_split):
    with pytest.raises(VgsslError, match="positive choice 'hardest'"):
        GeoPairConfig(positive="hardest")
    with pytest.raises(VgsslError, match="db_negative_ratio"):
        GeoPairConfig(db_negative_ratio=-1)


def test_split_with_no_usable_query(tmp_path):
    split = load_split(make_dataset(tmp_path / "far", [(0, 0)], [(1000, 1000)], split="train"), "train")
    with pytest.raises(VgsslError, match="no query has a database image within"):
        GeoPairSampler(split, GeoPairConfig())
