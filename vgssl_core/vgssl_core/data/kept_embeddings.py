"""Kept retrieval embeddings of training images, by side and index, each with the epoch it came from.

Feature-nearest positives need, before each epoch, the current model's descriptor of every
sampled query and of every database image within the train radius of one. The reference
describes them all again each epoch (about half to two thirds of an epoch's step time). Kept
here (on CPU, float16: half the memory and checkpoint bytes, and the checkpoint holds exactly
what the run uses, so a resume chooses bit for bit the same positives), a descriptor stands in
for a new description for at most ``max_age`` epochs. They come from the descriptions before
earlier epochs and, where the step computes what a description would (no batch-statistics
BatchNorm, an un-augmented view: ``training.embedding_tap``), from the training steps.

Tags: an embedding seen by a training step of epoch ``e`` is tagged ``e``, one described before
epoch ``e`` (with the model of ``e``'s start) is tagged ``e``; for epoch ``e`` an embedding is
usable when ``e - tag <= max_age``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

SIDES = ("queries", "database")


class KeptEmbeddings:
    """L2-normalised float16 descriptors of training images, newest kept per image."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[int, tuple[int, np.ndarray]]] = {s: {} for s in SIDES}

    def __len__(self) -> int:
        return sum(len(r) for r in self._rows.values())

    def add(self, side: str, indices, embeddings, tag: int) -> None:
        """Keep ``embeddings`` [N, D] (normalised here) of images ``indices`` of ``side``, tagged
        ``tag``; a later add of the same image replaces it (the newest descriptor wins)."""
        emb = np.asarray(embeddings, dtype=np.float32)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        rows = self._rows[side]
        for i, e in zip(np.asarray(indices).tolist(), emb.astype(np.float16)):
            rows[int(i)] = (int(tag), e)

    def missing(self, side: str, indices, epoch: int, max_age: int) -> np.ndarray:
        """Those of ``indices`` to describe for ``epoch``: none kept, or kept but older than ``max_age``.

        Each image waits for its own expiry. Re-describing some early to spread the work evenly
        over the epochs (as a first version did) costs about half a full refresh more over any
        run, for no fresher positives on average: both keep a descriptor's age between 0 and
        ``max_age``; only the epochs' times differ (here one epoch in ``max_age + 1`` describes
        what expired together)."""
        rows = self._rows[side]
        out = [i for i in np.asarray(indices).tolist() if i not in rows or epoch - rows[i][0] > max_age]
        return np.array(out, dtype=np.int64)

    def get(self, side: str, indices) -> np.ndarray:
        """[N, D] float32 embeddings of ``indices`` (all must be kept)."""
        rows = self._rows[side]
        return np.stack([rows[int(i)][1] for i in np.asarray(indices).tolist()]).astype(np.float32)

    def forget_older_than(self, epoch: int, max_age: int) -> None:
        """Drop what can no longer be used from ``epoch`` on: memory stays bounded by ``max_age`` epochs."""
        for side in SIDES:
            self._rows[side] = {i: r for i, r in self._rows[side].items() if epoch - r[0] <= max_age}

    # -- checkpoints: plain tensors (weights_only=True loads them) -------------------------
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for side in SIDES:
            rows = self._rows[side]
            keys = sorted(rows)
            out[side] = {"index": torch.tensor(keys, dtype=torch.int64),
                         "tag": torch.tensor([rows[k][0] for k in keys], dtype=torch.int64),
                         "embedding": torch.from_numpy(np.stack([rows[k][1] for k in keys])) if keys
                         else torch.empty(0, 0, dtype=torch.float16)}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for side in SIDES:
            part = state.get(side) or {}
            index = part.get("index", torch.empty(0)).tolist()
            tags = part.get("tag", torch.empty(0)).tolist()
            emb = part["embedding"].numpy() if index else np.empty((0, 0), np.float16)
            self._rows[side] = {int(i): (int(t), emb[k]) for k, (i, t) in enumerate(zip(index, tags))}
