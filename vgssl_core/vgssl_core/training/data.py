"""Datasets that turn planned items (GeoPairs, triplets) into augmented tensors.

The plan (which images, which augmentation seed) is made in the main process by the sampler or
the miner; a dataset item is then a pure function of it, so any number of workers, or a
resume, produces identical batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from vgssl_core.data.dataset import GeoSplit, load_image
from vgssl_core.data.geopairs import QUERY, GeoPair
from vgssl_core.data.transforms import eval_transform, seeded, train_transform


class GeoPairImages(Dataset):
    """``dataset[GeoPair]`` -> (view_a, view_b, place id)."""

    def __init__(self, split: GeoSplit, image_size, augment: dict) -> None:
        self.split = split
        self.augmented = train_transform(image_size, augment)
        self.plain = eval_transform(image_size)
        self.augment_positive = bool(augment.get("augment_positive", False))

    def __len__(self) -> int:  # items come from the batch sampler, not from an index range
        return len(self.split.queries) + len(self.split.database)

    def __getitem__(self, pair: GeoPair) -> tuple[torch.Tensor, torch.Tensor, int]:
        if pair.kind == QUERY:
            view_a = seeded(self.augmented, load_image(self.split.queries.paths[pair.a]), pair.seed)
            positive = load_image(self.split.database.paths[pair.b])
            view_b = seeded(self.augmented, positive, pair.seed + 1) if self.augment_positive else self.plain(positive)
        else:  # a database negative: the same image, augmented twice
            image = load_image(self.split.database.paths[pair.a])
            view_a = seeded(self.augmented, image, pair.seed)
            view_b = seeded(self.augmented, image, pair.seed + 1)
        return view_a, view_b, pair.place


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


class ListBatches:
    """A batch sampler over a fixed list of planned items (the miner's triplets)."""

    def __init__(self, items: list, batch_size: int) -> None:
        self.batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        self.batches = [b for b in self.batches if len(b) >= 2] or self.batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
