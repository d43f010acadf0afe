"""GeoPair sampling: the positives of self-supervised VG training, with no negative mining.

A GeoPair is a training query and a database image within ``train_radius_m`` of it: two real
views of one place that an SSL method pulls together. Per epoch the plan holds
``queries_per_epoch`` query pairs plus ``round(r * n_query_pairs)`` *database negatives* —
database images farther than ``eval_radius_m`` from every training query, each paired with
itself (two augmentations) — so the model also sees places no query covers.

Batches are *place-aware*: no two pairs in a batch have images within ``eval_radius_m`` of
each other. The reference implementation batches neighbours together, so a contrastive loss
pushes apart two views of the same place; here that cannot happen.

Everything is a pure function of (seed, epoch): the plan is identical with any number of
data-loader workers, after a resume, and each distributed rank takes a disjoint shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy.spatial import cKDTree

from vgssl_core.data.dataset import GeoSplit
from vgssl_core.data.geo import EVAL_RADIUS_M, TRAIN_RADIUS_M
from vgssl_core.errors import VgsslError

QUERY, DB_NEGATIVE = 0, 1
POSITIVE_CHOICES = ("uniform", "feature-nearest")


@dataclass(frozen=True)
class GeoPair:
    """One training item: image ``a`` (a query, or a database negative) and database image ``b``."""

    kind: int  # QUERY or DB_NEGATIVE
    a: int  # query index (QUERY) or database index (DB_NEGATIVE)
    b: int  # database index
    place: int  # id of the place (grid cell of eval radius) for same-place masking
    seed: int  # augmentation seed of this item in this epoch


@dataclass
class GeoPairConfig:
    train_radius_m: float = TRAIN_RADIUS_M
    eval_radius_m: float = EVAL_RADIUS_M
    queries_per_epoch: int | None = None  # None: every usable query
    db_negative_ratio: float = 1.0  # r
    positive: str = "uniform"
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


def place_ids(utm: np.ndarray, cell_m: float) -> np.ndarray:
    """Integer place id per position: its cell in a grid of ``cell_m`` metres."""
    cells = np.floor(np.asarray(utm, float) / cell_m).astype(np.int64)
    return cells[:, 0] * 1_000_003 + cells[:, 1]


class GeoPairSampler:
    """Builds each epoch's GeoPair plan and its place-aware batches for one training split."""

    def __init__(self, split: GeoSplit, config: GeoPairConfig) -> None:
        self.split, self.cfg = split, config
        db_utm, q_utm = split.database.utm, split.queries.utm
        positives = split.positives(config.train_radius_m)
        self.usable_queries = np.array([i for i, p in enumerate(positives) if len(p)], dtype=np.int64)
        self.positives = positives
        self.n_queries_without_positive = len(positives) - len(self.usable_queries)
        if len(self.usable_queries) == 0:
            raise VgsslError(
                f"{split.root}/images/{split.name}: no query has a database image within "
                f"{config.train_radius_m} m; nothing to train on"
            )
        near_query = cKDTree(q_utm).query_ball_point(db_utm, r=config.eval_radius_m)
        self.db_negatives = np.array([i for i, hits in enumerate(near_query) if not hits], dtype=np.int64)
        self.q_place = place_ids(q_utm, config.eval_radius_m)
        self.db_place = place_ids(db_utm, config.eval_radius_m)
        self._q_desc: np.ndarray | None = None
        self._db_desc: np.ndarray | None = None

    # -- feature-nearest positives -------------------------------------------------------
    def set_descriptors(self, q_desc: np.ndarray, db_desc: np.ndarray) -> None:
        """Current-model descriptors (L2-normalised) for the ``feature-nearest`` positive choice."""
        self._q_desc, self._db_desc = q_desc, db_desc

    def _choose_positive(self, q: int, rng: np.random.Generator) -> int:
        candidates = self.positives[q]
        if self.cfg.positive == "feature-nearest":
            if self._q_desc is None or self._db_desc is None:
                raise RuntimeError("feature-nearest positives need set_descriptors() before the epoch")
            sims = self._db_desc[candidates] @ self._q_desc[q]
            return int(candidates[int(np.argmax(sims))])
        return int(candidates[rng.integers(len(candidates))])

    # -- the epoch plan ------------------------------------------------------------------
    def n_query_pairs(self) -> int:
        n = self.cfg.queries_per_epoch
        return len(self.usable_queries) if n is None else min(int(n), len(self.usable_queries))

    def pairs(self, epoch: int) -> list[GeoPair]:
        """This epoch's pairs, in random order: query pairs then database negatives."""
        rng = np.random.default_rng([self.cfg.seed, epoch])
        chosen = rng.permutation(self.usable_queries)[: self.n_query_pairs()]
        n_neg = min(int(round(self.cfg.db_negative_ratio * len(chosen))), len(self.db_negatives))
        negatives = rng.choice(self.db_negatives, size=n_neg, replace=False) if n_neg else np.empty(0, np.int64)
        seeds = rng.integers(0, 2**62, size=len(chosen) + n_neg)
        items = [GeoPair(QUERY, int(q), self._choose_positive(int(q), rng), int(self.q_place[q]), int(s))
                 for q, s in zip(chosen, seeds)]
        items += [GeoPair(DB_NEGATIVE, int(d), int(d), int(self.db_place[d]), int(s))
                  for d, s in zip(negatives, seeds[len(chosen):])]
        order = rng.permutation(len(items))
        return [items[i] for i in order]

    def pair_positions(self, pairs: list[GeoPair]) -> tuple[np.ndarray, np.ndarray]:
        """UTM of image a and image b of each pair."""
        db_utm, q_utm = self.split.database.utm, self.split.queries.utm
        a = np.array([q_utm[p.a] if p.kind == QUERY else db_utm[p.a] for p in pairs]).reshape(-1, 2)
        b = db_utm[[p.b for p in pairs]].reshape(-1, 2)
        return a, b

    def batches(self, epoch: int) -> list[list[GeoPair]]:
        """Place-aware batches of this epoch (first-fit); batches of fewer than 2 pairs are dropped."""
        pairs = self.pairs(epoch)
        conflicts = _conflicts(*self.pair_positions(pairs), self.cfg.eval_radius_m)
        batch_size = self.cfg.batch_size
        open_batches: list[tuple[list[int], set[int]]] = []
        done: list[list[int]] = []
        for i in range(len(pairs)):
            for members, member_set in open_batches:
                if not (conflicts[i] & member_set):
                    members.append(i)
                    member_set.add(i)
                    break
            else:
                open_batches.append(([i], {i}))
            full = [b for b in open_batches if len(b[0]) >= batch_size]
            if full:
                done.extend(b[0] for b in full)
                open_batches = [b for b in open_batches if len(b[0]) < batch_size]
        done.extend(b[0] for b in open_batches)
        kept = [[pairs[i] for i in members] for members in done if len(members) >= 2]
        rng = np.random.default_rng([self.cfg.seed, epoch, 1])
        return [kept[i] for i in rng.permutation(len(kept))]

    def shard(self, epoch: int, rank: int = 0, world_size: int = 1) -> list[list[GeoPair]]:
        """Rank ``rank``'s disjoint share of the epoch's batches; every rank gets the same count."""
        batches = self.batches(epoch)
        usable = len(batches) - len(batches) % world_size
        return batches[rank:usable:world_size]


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

    def __init__(self, sampler: GeoPairSampler, rank: int = 0, world_size: int = 1) -> None:
        self.sampler, self.rank, self.world_size = sampler, rank, world_size
        self.epoch = 0
        self._cache: tuple[int, list[list[GeoPair]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[GeoPair]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self.sampler.shard(self.epoch, self.rank, self.world_size))
        return self._cache[1]

    def __iter__(self) -> Iterator[list[GeoPair]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
