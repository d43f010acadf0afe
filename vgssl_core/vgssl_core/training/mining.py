"""Hard-negative mining for the supervised triplet baseline (Berton et al., CVPR 2022).

An epoch holds ``queries_per_epoch`` queries (by default as many as a GeoPair epoch, so the
baseline and the SSL methods see the same number of queries per epoch), taken in chunks of
``cache_refresh_queries``. Before each chunk is trained on, the current model describes a
*cache* and each query of the chunk gets its feature-nearest positive within the train radius
and ``negatives_per_query`` negatives farther than the evaluation radius. The modes differ in
where the negatives come from (the benchmark's ``datasets_ws.py:586-598``):

- ``full``: the whole database is described; each query's candidates are ``db_subset`` random
  database images of its own (all, if the database is smaller) plus the hardest negatives it
  got the last time it was mined; the ``negatives_per_query`` nearest become its negatives;
- ``partial``: ``db_subset`` random database images per refresh (plus the chunk's positives, for
  the positive choice) are described; the hardest among them are the negatives;
- ``random``: only the chunk's positives are described; negatives are drawn at random.

Search runs with faiss on the cache (``evaluation.search.ExactIndex``). Everything is a function
of (seed, epoch, chunk) and the model; the previous hardest negatives are state, saved in
checkpoints (``state_dict``) so a resumed run mines as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

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
        # the SSL epoch's query count unless set: data.queries_per_epoch, else every usable query
        wanted = mining.get("queries_per_epoch") or data.get("queries_per_epoch") or len(self.usable)
        self.queries_per_epoch = int(wanted)
        self.previous_hardest: dict[int, tuple[int, ...]] = {}  # full mode: query -> its last negatives
        self.mined: dict[int, dict[int, list[Triplet]]] = {}  # the current epoch's mined chunks

    # -- state (checkpoints) -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        queries = sorted(self.previous_hardest)
        mined = [{"epoch": e, "chunk": c, "triplets": [[t.query, t.positive, list(t.negatives), t.seed] for t in ts]}
                 for e, chunks in self.mined.items() for c, ts in chunks.items()]
        return {"queries": queries, "negatives": [list(self.previous_hardest[q]) for q in queries], "mined": mined}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous_hardest = {int(q): tuple(int(n) for n in negs)
                                 for q, negs in zip(state.get("queries", []), state.get("negatives", []))}
        self.mined = {}
        for entry in state.get("mined", []):
            self.mined.setdefault(int(entry["epoch"]), {})[int(entry["chunk"])] = [
                Triplet(int(q), int(p), tuple(int(n) for n in negs), int(seed)) for q, p, negs, seed in entry["triplets"]]

    def chunk(self, epoch: int, describe: Describe, chunk: int) -> list[Triplet]:
        """Chunk ``chunk`` of ``epoch``: mined now, or as it was mined before (a resumed run).
        Only the current epoch's chunks are kept."""
        if epoch not in self.mined:
            self.mined = {epoch: {}}
        if chunk not in self.mined[epoch]:
            self.mined[epoch][chunk] = self.triplets(epoch, describe, chunk)
        return self.mined[epoch][chunk]

    # -- the epoch's queries -----------------------------------------------------------------
    def epoch_chunks(self, epoch: int) -> list[np.ndarray]:
        """The epoch's queries in cache-refresh chunks; more queries than usable ones repeat
        them (a fresh permutation each pass)."""
        rng = np.random.default_rng([self.seed, epoch, 3])
        passes = math.ceil(self.queries_per_epoch / len(self.usable))
        order = np.concatenate([rng.permutation(self.usable) for _ in range(passes)])[: self.queries_per_epoch]
        size = max(int(self.cfg["cache_refresh_queries"]), 1)
        return [order[i:i + size] for i in range(0, len(order), size)]

    def _random_negatives(self, q: int, rng: np.random.Generator, k: int, taken: list[int] | None = None) -> list[int]:
        n_db = len(self.split.database)
        excluded = set(self.near[q].tolist()) | set(taken or [])
        out: list[int] = []
        while len(out) < k and len(excluded) + len(out) < n_db:
            cand = int(rng.integers(n_db))
            if cand not in excluded and cand not in out:
                out.append(cand)
        return out

    def triplets(self, epoch: int, describe: Describe, chunk: int = 0) -> list[Triplet]:
        """Mine chunk ``chunk`` of ``epoch`` (one cache refresh) with the current model."""
        queries = self.epoch_chunks(epoch)[chunk]
        rng = np.random.default_rng([self.seed, epoch, chunk])
        mode, k = self.cfg["mode"], int(self.cfg["negatives_per_query"])
        n_db, subset = len(self.split.database), min(int(self.cfg["db_subset"]), len(self.split.database))
        chunk_positives = np.unique(np.concatenate([self.positives[q] for q in queries]))
        shared = rng.choice(n_db, size=subset, replace=False) if mode == "partial" else None
        if mode == "full":
            cache = np.arange(n_db)
        elif mode == "partial":
            cache = np.union1d(shared, chunk_positives)
        else:
            cache = chunk_positives
        q_desc = describe("queries", queries)
        index = ExactIndex(describe("database", cache), "ip")
        where = {int(d): i for i, d in enumerate(cache)}
        seeds = rng.integers(0, 2**62, size=len(queries))
        triplets = []
        for row, (q, seed) in enumerate(zip(queries.tolist(), seeds.tolist())):
            query = q_desc[row] / max(float(np.linalg.norm(q_desc[row])), 1e-12)
            pos_rows = [where[int(p)] for p in self.positives[q]]
            positive = int(self.positives[q][int(np.argmax(index.db[pos_rows] @ query))])
            if mode == "random":
                negatives = self._random_negatives(q, rng, k)
            else:
                candidates = self.full_candidates(q, rng) if mode == "full" else np.setdiff1d(shared, self.near[q])
                sims = index.db[[where[int(c)] for c in candidates]] @ query if len(candidates) else np.empty(0)
                negatives = [int(candidates[i]) for i in np.argsort(-sims, kind="stable")[:k]]
                if len(negatives) < k:  # a small database: top up at random, never with same-place images
                    negatives += self._random_negatives(q, rng, k - len(negatives), negatives)
                if mode == "full":
                    self.previous_hardest[q] = tuple(negatives)
            if len(negatives) == k:
                triplets.append(Triplet(q, positive, tuple(negatives), int(seed)))
        if not triplets:
            raise VgsslError(f"could not mine {k} negatives farther than the evaluation radius for any query; "
                             "lower mining.negatives_per_query or use a larger database")
        return triplets

    def full_candidates(self, q: int, rng: np.random.Generator) -> np.ndarray:
        """Full mode: where query ``q`` takes its negatives from: ``db_subset`` random database
        images (all, if fewer) and its previous hardest negatives, less its same-place images."""
        n_db = len(self.split.database)
        own = rng.choice(n_db, size=min(int(self.cfg["db_subset"]), n_db), replace=False)
        previous = np.array(self.previous_hardest.get(q, ()), dtype=np.int64)
        return np.setdiff1d(np.union1d(own, previous), self.near[q])


class MinedBatches:
    """A torch ``batch_sampler`` over one epoch of mined triplets, mined chunk by chunk as training
    reaches it (the benchmark's loop: refresh the cache with the current model, train on its
    ``cache_refresh_queries`` queries, refresh again). Mining runs in the main process, where the
    data loader draws batches; with workers it runs a few batches ahead of the optimizer.

    Each chunk is cut into global batches of ``batch_size`` x ranks triplets and each rank takes
    its contiguous slice of each (``rank_slice``), so the ranks of one step train on the batch one
    process would. Every rank mines the same chunk with the same (DDP-synchronised) weights.

    Mined chunks are kept in ``miner.mined`` (epoch -> chunk -> triplets) and saved in checkpoints
    with the miner's state: mining runs ahead of the optimizer (prefetch), so a run resumed
    mid-epoch takes the chunks the interrupted run had already mined from there instead of
    mining them again with later weights. ``skip`` leaves out the batches already trained on.
    """

    def __init__(self, miner: TripletMiner, epoch: int, describe: Describe, batch_size: int,
                 rank: int = 0, world_size: int = 1, skip: int = 0) -> None:
        self.miner, self.epoch, self.describe = miner, epoch, describe
        self.batch_size, self.rank, self.world_size = int(batch_size), rank, world_size
        self.skip = int(skip)
        self.chunks = miner.epoch_chunks(epoch)

    def _n_batches(self, n: int) -> int:
        per_step = self.batch_size * self.world_size
        return sum(1 for i in range(0, n, per_step) if min(per_step, n - i) >= self.world_size)

    def __len__(self) -> int:
        """The whole epoch's count, skipped batches included (mined triplets per chunk can only
        be fewer than its queries when a query finds too few negatives; then the epoch ends early)."""
        return sum(self._n_batches(len(c)) for c in self.chunks)

    def __iter__(self) -> Iterator[list[Triplet]]:
        from vgssl_core.data.geopairs import rank_slice

        done, per_step = 0, self.batch_size * self.world_size
        for c in range(len(self.chunks)):
            # chunks trained on before a resume come from the checkpoint, not mined again
            triplets = self.miner.chunk(self.epoch, self.describe, c)
            for i in range(0, len(triplets), per_step):
                mine = rank_slice(triplets[i:i + per_step], self.rank, self.world_size)
                if not mine:
                    continue
                done += 1
                if done > self.skip:
                    yield mine
