"""Triplet mining as in the benchmark (Berton et al., CVPR 2022): candidates, memory, query budget."""

import numpy as np
import pytest

from testkit import make_dataset
from vgssl_core.data.dataset import load_split
from vgssl_core.training.config import DEFAULTS
from vgssl_core.training.mining import MinedBatches, TripletMiner

DATA = {**DEFAULTS["data"]}


@pytest.fixture
def street(tmp_path):
    """A 1 km street: database every 5 m (200 images), queries every 50 m."""
    db = [(float(x), 0.0) for x in range(0, 1000, 5)]
    q = [(x + 2.0, 1.0) for x in range(0, 1000, 50)]
    return load_split(make_dataset(tmp_path / "street", db, q, split="train"), "train")


def miner(split, **mining):
    return TripletMiner(split, {**DEFAULTS["mining"], "negatives_per_query": 3, **mining}, DATA, seed=0)


def describer(split, seed=0, dim=16):
    """Fixed random unit descriptors per image: (side, indices) -> rows."""
    rng = np.random.default_rng(seed)
    table = {"queries": rng.normal(size=(len(split.queries), dim)), "database": rng.normal(size=(len(split.database), dim))}
    table = {k: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for k, v in table.items()}
    calls = []

    def describe(side, indices):
        calls.append((side, np.asarray(indices).copy()))
        return table[side][indices]

    return describe, table, calls


def test_full_candidates_are_a_random_subset_plus_the_previous_hardest(street):
    m = miner(street, mode="full", db_subset=30)
    q = 4
    previous = (150, 170, 190)  # far from query 4 (at 202 m)
    m.previous_hardest[q] = previous
    candidates = m.full_candidates(q, np.random.default_rng(1))
    assert set(previous) <= set(candidates.tolist())
    assert 30 - len(m.near[q]) <= len(set(candidates.tolist()) - set(previous)) <= 30
    assert not set(candidates.tolist()) & set(m.near[q].tolist())
    # a database smaller than db_subset: every image not of the query's place
    everything = miner(street, mode="full", db_subset=1000).full_candidates(q, np.random.default_rng(1))
    assert set(everything.tolist()) == set(range(len(street.database))) - set(m.near[q].tolist())


def test_full_mining_keeps_each_querys_hardest_negatives_for_next_time(street):
    m = miner(street, mode="full", db_subset=2, cache_refresh_queries=100)
    describe, table, calls = describer(street)
    first = {t.query: t.negatives for t in m.triplets(0, describe)}
    assert calls[1][0] == "database" and len(calls[1][1]) == len(street.database)  # full: the whole database
    assert {q: tuple(n) for q, n in first.items()} == m.previous_hardest
    # make image 190 the hardest negative of query 4: the next refresh finds it although its own
    # random draw (2 images) almost surely misses it, because it is among the previous hardest
    q = 4
    table["database"][190] = table["queries"][q]
    m.previous_hardest[q] = (190,) + m.previous_hardest[q][1:]
    second = {t.query: t.negatives for t in m.triplets(1, describe)}
    assert second[q][0] == 190
    for query, negatives in second.items():  # negatives come from the random draw or last time's
        assert np.min(np.abs(street.database.utm[list(negatives), 0] - street.queries.utm[query, 0])) > 25.0


def test_partial_mining_takes_negatives_from_one_random_subset(street):
    m = miner(street, mode="partial", db_subset=20, cache_refresh_queries=100)
    describe, _, calls = describer(street)
    triplets = m.triplets(0, describe)
    described = set(calls[1][1].tolist())
    assert len(described) < len(street.database)
    assert all(set(t.negatives) <= described for t in triplets) and not m.previous_hardest


def test_epoch_is_the_query_budget_in_cache_refresh_chunks(street):
    m = miner(street, mode="random", cache_refresh_queries=8, queries_per_epoch=30)
    chunks = m.epoch_chunks(0)
    assert [len(c) for c in chunks] == [8, 8, 8, 6]
    assert len(set(np.concatenate(chunks[:2]).tolist())) == 16  # 20 queries: no repeat within a pass
    describe, _, calls = describer(street)
    batches = MinedBatches(m, 0, describe, batch_size=4)
    assert len(batches) == 8 and not calls  # mined only when iterated
    sizes = [len(b) for b in batches]
    assert sizes == [4, 4] * 3 + [4, 2] and sum(side == "queries" for side, _ in calls) == 4


def test_previous_hardest_survive_a_checkpoint(street):
    m = miner(street, mode="full", db_subset=10)
    describe, _, _ = describer(street)
    m.triplets(0, describe)
    restored = miner(street, mode="full", db_subset=10)
    restored.load_state_dict(m.state_dict())
    assert restored.previous_hardest == m.previous_hardest and m.previous_hardest
