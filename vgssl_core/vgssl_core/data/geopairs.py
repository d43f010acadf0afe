"""GeoPair sampling: the positives of self-supervised VG training, with no negative mining.

A GeoPair is a training query and a database image within ``train_radius_m`` of it: two real
views of one place that an SSL method pulls together. Per epoch the plan holds
``queries_per_epoch`` query pairs plus ``round(r * n_query_pairs)`` *database negatives*:
database images farther than ``eval_radius_m`` from every query *sampled for that epoch*
(VG-SSL, ``datasets_ws.py:878-883``), each paired with itself (two augmentations), so the model
also sees places the epoch's queries do not cover. When that pool is smaller than asked, every
pool image is used and one warning line gives the numbers.

The positive is a uniformly random database image within the train radius, or (``positive:
feature-nearest``, as VG-SSL, ``datasets_ws.py:807-822``) the one nearest the query in the
current model's descriptor space. Only the epoch's sampled queries and their candidate positives
need descriptors; a descriptor made before an earlier epoch (or by a training step that computes
exactly what a description would: ``keep``) stands in for at most ``positive_max_age`` epochs
(``data.kept_embeddings``; ``needs_descriptors`` / ``set_descriptors``). ``positive_max_age: 0``
describes them all every epoch, as the reference does.

Batches hold ``batch_size`` pairs (all but the last of the epoch) and are *place-aware* where
possible: no two pairs of a batch have images within ``eval_radius_m`` of each other (the
reference batches neighbours together, so a contrastive loss pushes apart two views of one
place). When the remaining pairs cannot complete a batch that way, it is filled anyway and the
same-place pairs it then holds are counted (``EpochStats.same_place_violations``).

Everything is a pure function of (seed, epoch) (and, for feature-nearest, the descriptors): the
plan is identical with any number of data-loader workers, after a resume, and each distributed
rank takes a disjoint shard.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
from scipy.spatial import cKDTree

from vgssl_core.data.dataset import GeoSplit
from vgssl_core.data.geo import EVAL_RADIUS_M, TRAIN_RADIUS_M
from vgssl_core.data.kept_embeddings import KeptEmbeddings
from vgssl_core.errors import VgsslError

log = logging.getLogger("vgssl")

QUERY, DB_NEGATIVE = 0, 1
POSITIVE_CHOICES = ("uniform", "feature-nearest")


@dataclass(frozen=True)
class GeoPair:
    """One training item: image ``a`` (a query, or a database negative) and database image ``b``."""

    kind: int  # QUERY or DB_NEGATIVE
    a: int  # query index (QUERY) or database index (DB_NEGATIVE)
    b: int  # database index
    seed: int  # augmentation seed of this item in this epoch


@dataclass
class GeoPairConfig:
    train_radius_m: float = TRAIN_RADIUS_M
    eval_radius_m: float = EVAL_RADIUS_M
    queries_per_epoch: int | None = None  # None: every usable query
    db_negative_ratio: float = 1.0  # r
    positive: str = "uniform"
    positive_max_age: int = 0  # feature-nearest: epochs a kept descriptor stands in for a new one
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.positive not in POSITIVE_CHOICES:
            raise VgsslError(f"unknown positive choice '{self.positive}'; valid: {', '.join(POSITIVE_CHOICES)}")
        if not self.db_negative_ratio >= 0:
            raise VgsslError(f"db_negative_ratio must be a real >= 0, got {self.db_negative_ratio}")
        if self.batch_size < 2:
            raise VgsslError(f"batch_size must be >= 2 for a pairwise loss, got {self.batch_size}")
        if self.train_radius_m <= 0 or self.eval_radius_m <= 0:
            raise VgsslError("train_radius_m and eval_radius_m must be positive")
        if int(self.positive_max_age) < 0:
            raise VgsslError(f"positive_max_age must be an integer >= 0, got {self.positive_max_age}")
        if self.queries_per_epoch is not None and int(self.queries_per_epoch) < 1:
            raise VgsslError(f"queries_per_epoch must be >= 1 or null, got {self.queries_per_epoch}")


@dataclass(frozen=True)
class EpochStats:
    """What one epoch's plan holds (``summary.json``'s ``data_history``, one log line per epoch)."""

    epoch: int
    query_pairs: int
    negatives_asked: int
    negatives_delivered: int
    negative_pool: int  # database images beyond eval_radius_m of every sampled query
    batches: int
    batch_size_min: int
    batch_size_mean: float
    same_place_violations: int  # pairs of pairs within eval_radius_m sharing a batch
    pairs_dropped: int  # a last batch of a single pair (a pairwise loss needs 2)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return (f"epoch {self.epoch} data: {self.query_pairs} query pairs, database negatives "
                f"{self.negatives_delivered}/{self.negatives_asked} (pool {self.negative_pool}), "
                f"{self.batches} batches of {self.batch_size_min}-{self.batch_size_mean:.1f} pairs (min-mean), "
                f"{self.same_place_violations} same-place violations")


class GeoPairSampler:
    """Builds each epoch's GeoPair plan and its place-aware batches for one training split."""

    def __init__(self, split: GeoSplit, config: GeoPairConfig) -> None:
        self.split, self.cfg = split, config
        positives = split.positives(config.train_radius_m)
        self.usable_queries = np.array([i for i, p in enumerate(positives) if len(p)], dtype=np.int64)
        self.positives = positives
        self.n_queries_without_positive = len(positives) - len(self.usable_queries)
        if len(self.usable_queries) == 0:
            raise VgsslError(
                f"{split.root}/images/{split.name}: no query has a database image within "
                f"{config.train_radius_m} m; nothing to train on"
            )
        self._nearest: tuple[int, dict[int, int]] | None = None  # (epoch, query -> feature-nearest positive)
        self.kept = KeptEmbeddings()  # feature-nearest: descriptors of what training saw / what was described
        self._plans: dict[int, tuple[list[list[GeoPair]], EpochStats]] = {}
        self._warned_pool = False

    # -- the epoch's queries and feature-nearest positives ----------------------------------
    def n_query_pairs(self) -> int:
        n = self.cfg.queries_per_epoch
        return len(self.usable_queries) if n is None else min(int(n), len(self.usable_queries))

    def epoch_queries(self, epoch: int) -> np.ndarray:
        """The queries sampled for ``epoch`` (a pure function of (seed, epoch))."""
        rng = np.random.default_rng([self.cfg.seed, epoch, 2])
        return rng.permutation(self.usable_queries)[: self.n_query_pairs()]

    def needs_descriptors(self, epoch: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(query indices, database indices) to describe before ``epoch`` is planned, or None
        (uniform positives, or the epoch's positives are chosen): the sampled queries and their
        candidate positives that have no kept descriptor at most ``positive_max_age`` epochs old
        (either may be empty; ``set_descriptors`` is still due)."""
        if self.cfg.positive != "feature-nearest" or (self._nearest is not None and self._nearest[0] == epoch):
            return None
        queries = self.epoch_queries(epoch)
        candidates = np.unique(np.concatenate([self.positives[q] for q in queries]))
        age = int(self.cfg.positive_max_age)
        return self.kept.missing("queries", queries, epoch, age), self.kept.missing("database", candidates, epoch, age)

    def keep(self, side: str, indices, descriptors, epoch: int) -> None:
        """Descriptors of images of ``side`` ("queries" / "database") a training step of ``epoch`` saw."""
        if self.cfg.positive == "feature-nearest" and self.cfg.positive_max_age > 0:
            self.kept.add(side, indices, descriptors, epoch)

    def set_descriptors(self, epoch: int, q_idx: np.ndarray, q_desc: np.ndarray,
                        db_idx: np.ndarray, db_desc: np.ndarray) -> None:
        """The current model's descriptors of ``needs_descriptors(epoch)``; chooses the epoch's
        positives from them and the kept ones."""
        if len(q_idx):
            self.kept.add("queries", q_idx, q_desc, epoch)
        if len(db_idx):
            self.kept.add("database", db_idx, db_desc, epoch)
        nearest = {}
        for q in self.epoch_queries(epoch).tolist():
            candidates = self.positives[q]
            sims = self.kept.get("database", candidates) @ self.kept.get("queries", [q])[0]
            nearest[int(q)] = int(candidates[int(np.argmax(sims))])
        self.kept.forget_older_than(epoch, int(self.cfg.positive_max_age))
        if not self.cfg.positive_max_age:  # nothing is reused: checkpoints need not carry it
            self.kept = KeptEmbeddings()
        self._nearest = (epoch, nearest)
        self._plans.pop(epoch, None)

    # -- state (checkpoints): the epoch's feature-nearest positives, so a run resumed mid-epoch
    # replays the plan made with the model of the epoch's start, not the one it resumes with
    def state_dict(self) -> dict[str, Any]:
        if self._nearest is None:
            return {}
        epoch, nearest = self._nearest
        return {"epoch": epoch, "queries": list(nearest), "positives": list(nearest.values()),
                "kept": self.kept.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("epoch") is not None:
            self._nearest = (int(state["epoch"]), {int(q): int(b) for q, b in zip(state["queries"], state["positives"])})
            self._plans.pop(self._nearest[0], None)
        if state.get("kept") is not None:
            self.kept.load_state_dict(state["kept"])

    def _choose_positive(self, epoch: int, q: int, rng: np.random.Generator) -> int:
        candidates = self.positives[q]
        if self.cfg.positive == "feature-nearest":
            if self._nearest is None or self._nearest[0] != epoch:
                raise RuntimeError(f"feature-nearest positives need set_descriptors() for epoch {epoch} first")
            return self._nearest[1][q]
        return int(candidates[rng.integers(len(candidates))])

    # -- the epoch plan ------------------------------------------------------------------
    def _pairs(self, epoch: int) -> tuple[list[GeoPair], int, int]:
        """This epoch's pairs in random order, the negatives asked for and the pool size."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        chosen = self.epoch_queries(epoch)
        db_utm = self.split.database.utm
        gap, _ = cKDTree(self.split.queries.utm[chosen]).query(db_utm, distance_upper_bound=self.cfg.eval_radius_m)
        pool = np.flatnonzero(~np.isfinite(gap))  # no sampled query within eval_radius_m
        asked = int(round(self.cfg.db_negative_ratio * len(chosen)))
        n_neg = min(asked, len(pool))
        if n_neg < asked and not self._warned_pool:
            self._warned_pool = True
            log.warning(f"warning: data.db_negative_ratio={self.cfg.db_negative_ratio:g} asks for {asked} database "
                        f"negatives per epoch ({len(chosen)} query pairs) but only {len(pool)} database images lie "
                        f"beyond {self.cfg.eval_radius_m:g} m of epoch {epoch}'s queries; using {n_neg}")
        negatives = rng.choice(pool, size=n_neg, replace=False) if n_neg else np.empty(0, np.int64)
        seeds = rng.integers(0, 2**62, size=len(chosen) + n_neg)
        items = [GeoPair(QUERY, int(q), self._choose_positive(epoch, int(q), rng), int(s))
                 for q, s in zip(chosen, seeds)]
        items += [GeoPair(DB_NEGATIVE, int(d), int(d), int(s)) for d, s in zip(negatives, seeds[len(chosen):])]
        order = rng.permutation(len(items))
        return [items[i] for i in order], asked, len(pool)

    def pairs(self, epoch: int) -> list[GeoPair]:
        """This epoch's pairs, in random order: query pairs and database negatives."""
        return self._pairs(epoch)[0]

    def pair_positions(self, pairs: list[GeoPair]) -> tuple[np.ndarray, np.ndarray]:
        """UTM of image a and image b of each pair."""
        db_utm, q_utm = self.split.database.utm, self.split.queries.utm
        a = np.array([q_utm[p.a] if p.kind == QUERY else db_utm[p.a] for p in pairs]).reshape(-1, 2)
        b = db_utm[[p.b for p in pairs]].reshape(-1, 2)
        return a, b

    def plan(self, epoch: int) -> tuple[list[list[GeoPair]], EpochStats]:
        """The epoch's batches (all of ``batch_size`` pairs but the last) and what they hold."""
        if epoch not in self._plans:
            self._plans = {epoch: self._plan(epoch)}  # one epoch at a time is ever needed
        return self._plans[epoch]

    def _plan(self, epoch: int) -> tuple[list[list[GeoPair]], EpochStats]:
        pairs, asked, pool = self._pairs(epoch)
        conflicts = _conflicts(*self.pair_positions(pairs), self.cfg.eval_radius_m)
        groups = _fill_batches(conflicts, self.cfg.batch_size)
        rng = np.random.default_rng([self.cfg.seed, epoch, 1])
        full, last = [g for g in groups if len(g) == self.cfg.batch_size], [g for g in groups if len(g) < self.cfg.batch_size]
        groups = [full[i] for i in rng.permutation(len(full))] + last  # the short one (if any) stays last
        dropped = sum(len(g) for g in groups if len(g) < 2)
        groups = [g for g in groups if len(g) >= 2]
        violations = sum(len(conflicts[i] & set(g)) for g in groups for i in g) // 2
        sizes = [len(g) for g in groups] or [0]
        n_query = sum(p.kind == QUERY for p in pairs)
        stats = EpochStats(epoch, n_query, asked, len(pairs) - n_query, pool, len(groups), min(sizes),
                           round(float(np.mean(sizes)), 2), violations, dropped)
        return [[pairs[i] for i in g] for g in groups], stats

    def batches(self, epoch: int) -> list[list[GeoPair]]:
        """The epoch's batches: ``batch_size`` pairs each but the last, place-aware where possible."""
        return self.plan(epoch)[0]

    def shard(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[list[GeoPair]]:
        """Rank ``rank``'s share of the epoch's batches: its contiguous slice of each (global) batch,
        so the ranks of one step together train on exactly the batch one process would.

        Plan with ``batch_size`` = per-rank batch x ranks. A batch whose size is not a multiple
        of the ranks (the epoch's last) loses its remainder; every rank gets the same count."""
        return [rank_slice(b, rank, world_size) for b in self.batches(epoch) if len(b) >= 2 * world_size]


def rank_slice(batch: list, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous, equally long slice of a global batch (the remainder is dropped);
    concatenated in rank order the slices are the batch, the order ``all_gather`` returns."""
    share = len(batch) // world_size
    return batch[rank * share:(rank + 1) * share]


def _fill_batches(conflicts: list[set[int]], batch_size: int) -> list[list[int]]:
    """Batches of ``batch_size`` items (the last may be shorter), in order: each takes the first
    remaining items that conflict with none already in it; when none is left to complete it,
    it is filled anyway, each time with a remaining item (of the next few) that conflicts with the
    fewest already in it."""
    remaining = list(range(len(conflicts)))
    out: list[list[int]] = []
    while remaining:
        batch: list[int] = []
        members: set[int] = set()
        rest: list[int] = []
        for k, i in enumerate(remaining):
            if len(batch) == batch_size:
                rest.extend(remaining[k:])
                break
            if conflicts[i] & members:
                rest.append(i)
            else:
                batch.append(i)
                members.add(i)
        while len(batch) < batch_size and rest:  # fill anyway: the fewest same-place pairs first
            window = rest[: 8 * batch_size]  # bounded, so a dense world stays linear in its pairs
            k = min(range(len(window)), key=lambda w: len(conflicts[window[w]] & members))
            batch.append(rest.pop(k))
            members.add(batch[-1])
        out.append(batch)
        remaining = rest
    return out


def _conflicts(a: np.ndarray, b: np.ndarray, radius: float) -> list[set[int]]:
    """For each pair, the other pairs with any image within ``radius`` of one of its images."""
    n = len(a)
    points = np.concatenate([a, b]) if n else np.empty((0, 2))
    owner = np.concatenate([np.arange(n), np.arange(n)])
    out: list[set[int]] = [set() for _ in range(n)]
    for i, j in cKDTree(points).query_pairs(r=radius, output_type="ndarray") if n else []:
        pi, pj = owner[i], owner[j]
        if pi != pj:
            out[pi].add(int(pj))
            out[pj].add(int(pi))
    return out


class EpochBatches:
    """A torch ``batch_sampler``: yields the current epoch's batches of ``GeoPair`` items.

    ``set_epoch`` (called by the trainer at each epoch start) selects the plan, so data-loader
    workers receive items that fully describe what to load and how to augment it.
    """

    def __init__(self, sampler: GeoPairSampler, rank: int = 0, world_size: int = 1, skip: int = 0) -> None:
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.epoch = 0
        self.skip = int(skip)  # batches of the epoch already trained on (a mid-epoch resume)
        self._cache: tuple[int, list[list[GeoPair]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[GeoPair]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self.sampler.shard(self.epoch, self.rank, self.world_size))
        return self._cache[1]

    def __iter__(self) -> Iterator[list[GeoPair]]:
        return iter(self._batches()[self.skip:])

    def __len__(self) -> int:
        """The whole epoch's count, skipped batches included (Lightning counts a resumed epoch's
        batches from where it stopped)."""
        return len(self._batches())
