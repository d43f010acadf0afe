"""Hard-negative mining for the supervised triplet baseline (Berton et al., CVPR 2022).

Every ``cache_refresh_queries`` queries the current model describes a *cache*: the queries
and the database images that may serve as their positives and negatives. Each query gets its
feature-nearest positive within the train radius and, as negatives, its ``negatives_per_query``
feature-nearest database images farther than the evaluation radius. The modes differ in the
database part of the cache:

- ``full``: the whole database (the hardest negatives, and the cost GeoPairs avoid);
- ``partial``: a random subset of ``db_subset`` images per refresh plus the queries' positives;
- ``random``: only the queries' positives are described; negatives are drawn at random.

Search runs with faiss on the cache (``retrieval.ExactIndex``).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vgssl_core.data.dataset import GeoSplit
from vgssl_core.errors import VgsslError
from vgssl_core.evaluation.search import ExactIndex
from vgssl_core.training.data import Triplet

Describe = Callable[[str, np.ndarray], np.ndarray]  # (side, indices) -> (N, D) descriptors


class TripletMiner:
    def __init__(self, split: GeoSplit, mining: dict, data: dict, seed: int) -> None:
        self.split, self.cfg, self.seed = split, mining, seed
        self.positives = split.positives(data["train_radius_m"])
        self.near = split.positives(data["eval_radius_m"])  # never used as negatives
        self.usable = np.array([i for i, p in enumerate(self.positives) if len(p)], dtype=np.int64)
        if len(self.usable) == 0:
            raise VgsslError(f"{split.root}/images/{split.name}: no query has a database positive within "
                             f"{data['train_radius_m']} m; nothing to train on")
        self.n_queries_without_positive = len(self.positives) - len(self.usable)
        n_neg = int(mining["negatives_per_query"])
        if n_neg < 1:
            raise VgsslError(f"mining.negatives_per_query must be >= 1, got {n_neg}")

    def _random_negatives(self, q: int, rng: np.random.Generator, k: int) -> list[int]:
        n_db = len(self.split.database)
        excluded = set(self.near[q].tolist())
        out: list[int] = []
        while len(out) < k and len(excluded) + len(out) < n_db:
            cand = int(rng.integers(n_db))
            if cand not in excluded and cand not in out:
                out.append(cand)
        return out

    def triplets(self, epoch: int, describe: Describe) -> list[Triplet]:
        """Mine one cache refresh worth of triplets with the current model."""
        rng = np.random.default_rng([self.seed, epoch])
        chunk = rng.permutation(self.usable)[: int(self.cfg["cache_refresh_queries"])]
        mode, k = self.cfg["mode"], int(self.cfg["negatives_per_query"])
        chunk_positives = np.unique(np.concatenate([self.positives[q] for q in chunk]))
        if mode == "full":
            cache = np.arange(len(self.split.database))
        elif mode == "partial":
            size = min(int(self.cfg["db_subset"]), len(self.split.database))
            cache = np.union1d(rng.choice(len(self.split.database), size=size, replace=False), chunk_positives)
        else:
            cache = chunk_positives
        q_desc = describe("queries", chunk)
        index = ExactIndex(describe("database", cache), "ip")
        where = {int(d): i for i, d in enumerate(cache)}
        depth = min(len(cache), k + max(len(self.near[q]) for q in chunk))
        _, ranked = index.search(q_desc, depth)
        seeds = rng.integers(0, 2**62, size=len(chunk))
        triplets = []
        for row, (q, seed) in enumerate(zip(chunk.tolist(), seeds.tolist())):
            pos_rows = [where[int(p)] for p in self.positives[q]]
            sims = index.db[pos_rows] @ q_desc[row] / max(np.linalg.norm(q_desc[row]), 1e-12)
            positive = int(self.positives[q][int(np.argmax(sims))])
            if mode == "random":
                negatives = self._random_negatives(q, rng, k)
            else:
                near = set(self.near[q].tolist())
                negatives = [int(cache[c]) for c in ranked[row] if c >= 0 and int(cache[c]) not in near][:k]
                if len(negatives) < k:  # a small cache: top up at random, never with same-place images
                    negatives += [n for n in self._random_negatives(q, rng, k) if n not in negatives][: k - len(negatives)]
            if len(negatives) == k:
                triplets.append(Triplet(q, positive, tuple(negatives), int(seed)))
        if not triplets:
            raise VgsslError(f"could not mine {k} negatives farther than the evaluation radius for any query; "
                             "lower mining.negatives_per_query or use a larger database")
        return triplets
