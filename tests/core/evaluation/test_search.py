import numpy as np
import pytest

from vgssl_core.errors import VgsslError
from vgssl_core.evaluation.search import ExactIndex, prepare
from vgssl_core.evaluation.recall import evaluate_retrieval


def brute_force_recall(db, q, db_utm, q_utm, ns, threshold, metric):
    """Independent reference: full distance matrices in numpy, no faiss, no KD-tree."""
    if metric == "ip":
        db = db / np.linalg.norm(db, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        order = np.argsort(-(q @ db.T), axis=1, kind="stable")
    else:
        order = np.argsort(((q[:, None] - db[None]) ** 2).sum(-1), axis=1, kind="stable")
    geo = np.linalg.norm(q_utm[:, None] - db_utm[None], axis=-1) <= threshold
    hits = np.take_along_axis(geo, order, axis=1)
    return {n: 100.0 * hits[:, :n].any(axis=1).mean() for n in ns}


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_equals_brute_force(metric, seed):
    rng = np.random.default_rng(seed)
    n_db, n_q, dim = 500, 120, 32
    db_utm = rng.uniform(0, 600, (n_db, 2))
    q_utm = rng.uniform(0, 600, (n_q, 2))
    # descriptors that correlate with position, plus noise, so recall is neither 0 nor 100
    proj = rng.normal(size=(2, dim))
    db = db_utm @ proj / 100 + rng.normal(size=(n_db, dim))
    q = q_utm @ proj / 100 + rng.normal(size=(n_q, dim))
    ns = (1, 5, 10, 20)
    result = evaluate_retrieval(db, q, db_utm, q_utm, metric=metric, ns=ns, threshold_m=25.0)
    expected = brute_force_recall(db, q, db_utm, q_utm, ns, 25.0, metric)
    for n in ns:
        assert result.recall[n] == pytest.approx(expected[n], abs=1e-9)
    assert 0 < result.recall[1] < 100


def test_queries_without_any_positive_count_in_the_denominator():
    db_utm = np.array([[0.0, 0.0], [100.0, 0.0]])
    q_utm = np.array([[1.0, 0.0], [5000.0, 0.0]])  # second query has no database image nearby
    db = np.eye(2, 4)
    q = np.eye(2, 4)
    result = evaluate_retrieval(db, q, db_utm, q_utm, ns=(1, 2))
    assert result.recall == {1: 50.0, 2: 50.0}


def test_ip_descriptors_are_normalised_so_l2_ranking_matches():
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(50, 8)) * 7, rng.normal(size=(5, 8))
    index = ExactIndex(db, "ip")
    _, idx = index.search(q, 10)
    dbn, qn = prepare(db, "ip"), prepare(q, "ip")
    l2_order = np.argsort(((qn[:, None] - dbn[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert np.array_equal(idx, l2_order)


def test_dimension_mismatch_and_bad_metric():
    with pytest.raises(VgsslError, match="dimension 3, database has 4"):
        ExactIndex(np.ones((2, 4)), "ip").search(np.ones((1, 3)), 1)
    with pytest.raises(VgsslError, match="unknown metric 'cos'"):
        prepare(np.ones((2, 2)), "cos")
