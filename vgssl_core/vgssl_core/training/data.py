"""Datasets that turn planned items (GeoPairs, triplets) into augmented tensors.

The plan (which images, which augmentation seed) is made in the main process by the sampler or
the miner; a dataset item is then a pure function of it, so any number of workers, or a
resume, produces identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from vgssl_core.data.dataset import GeoSplit, load_image
from vgssl_core.data.geopairs import QUERY, GeoPair
from vgssl_core.data.transforms import eval_transform, seeded, train_transform


class GeoPairImages(Dataset):
    """``dataset[GeoPair]`` -> (view_a, view_b, positions): positions is float64 [2, 2], the UTM
    (east, north) of image a and of image b (MoCo v2 masks its queue by these)."""

    def __init__(self, split: GeoSplit, image_size, augment: dict) -> None:
        self.split = split
        self.augmented = train_transform(image_size, augment)
        self.plain = eval_transform(image_size)
        self.augment_positive = bool(augment.get("augment_positive", False))

    def __len__(self) -> int:  # items come from the batch sampler, not from an index range
        return len(self.split.queries) + len(self.split.database)

    def __getitem__(self, pair: GeoPair) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        db_utm = self.split.database.utm
        a_utm = self.split.queries.utm[pair.a] if pair.kind == QUERY else db_utm[pair.a]
        positions = torch.tensor(np.stack([a_utm, db_utm[pair.b]]), dtype=torch.float64)
        if pair.kind == QUERY:
            view_a = seeded(self.augmented, load_image(self.split.queries.paths[pair.a]), pair.seed)
            positive = load_image(self.split.database.paths[pair.b])
            view_b = seeded(self.augmented, positive, pair.seed + 1) if self.augment_positive else self.plain(positive)
        else:  # a database negative: the same image, augmented twice
            image = load_image(self.split.database.paths[pair.a])
            view_a = seeded(self.augmented, image, pair.seed)
            view_b = seeded(self.augmented, image, pair.seed + 1)
        return view_a, view_b, positions


@dataclass(frozen=True)
class Triplet:
    query: int
    positive: int
    negatives: tuple[int, ...]
    seed: int


class TripletImages(Dataset):
    """``dataset[Triplet]`` -> (query, positive, negatives (M, 3, H, W)); as the benchmark, only
    the query is augmented."""

    def __init__(self, split: GeoSplit, image_size, augment: dict) -> None:
        self.split = split
        self.augmented = train_transform(image_size, augment)
        self.plain = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.split.queries)

    def __getitem__(self, t: Triplet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        db = self.split.database.paths
        query = seeded(self.augmented, load_image(self.split.queries.paths[t.query]), t.seed)
        positive = self.plain(load_image(db[t.positive]))
        negatives = torch.stack([self.plain(load_image(db[n])) for n in t.negatives])
        return query, positive, negatives
