"""The interface every training method implements, and the momentum-encoder machinery.

A training loop drives any method the same way::

    method = build_method("byol", {"head_layers": 2, "head_dim": 2048})
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-5)
    # optional, NetVLAD only: method.model.init_netvlad_from_features(feats); method.sync_momentum()
    for step, (view_a, view_b, positions) in enumerate(geopairs):   # method.batch_kind == "pairs"
        loss = method.loss_pairs(view_a, view_b, positions)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        method.after_optimizer_step(step, max_steps)
    torch.save({"model_config": method.model.config, "state_dict": method.model.state_dict()}, path)

The triplet baseline has ``batch_kind == "triplets"`` and is driven through ``loss_triplets``.
``method.model`` is the descriptor network used for retrieval; everything else a method owns
(momentum encoder, predictor, queue) exists for training only.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor, nn

from vgssl_core.errors import ConfigError
from vgssl_core.models.network import DescriptorModel

MOMENTUM_SCHEDULES = ("constant", "cosine")


class Method(nn.Module):
    """Base of all training methods: owns ``model`` (the retrieval network) and its loss.

    Subclasses set the class attributes ``name``, ``batch_kind``, ``default_config`` (the
    method's hyperparameters with the paper's values) and ``model_defaults`` (the projection
    head the method uses unless the model config says otherwise).
    """

    name: ClassVar[str] = ""
    batch_kind: ClassVar[str] = "pairs"  # "pairs" -> loss_pairs, "triplets" -> loss_triplets
    default_config: ClassVar[dict[str, Any]] = {}
    model_defaults: ClassVar[dict[str, Any]] = {}
    nullable_keys: ClassVar[tuple[str, ...]] = ()  # integer hyperparameters that may also be null

    def __init__(self, model: DescriptorModel):
        super().__init__()
        if not isinstance(model, DescriptorModel):
            raise TypeError(f"{type(self).__name__} needs a DescriptorModel, got {type(model).__name__}")
        self.model = model
        self.config: dict[str, Any] = {}  # the method's hyperparameters, plain values

    def forward(self, images: Tensor) -> Tensor:
        """The (unnormalised) descriptor of ``images``: ``self.model(images)``."""
        return self.model(images)

    def loss_pairs(self, view_a: Tensor, view_b: Tensor, positions: Tensor) -> Tensor:
        """Loss of a batch of GeoPairs (SSL methods).

        Args:
            view_a, view_b: [B, 3, H, W]; ``view_a[i]`` and ``view_b[i]`` show the same place
                (a query and its positive, or a database image augmented twice).
            positions: float64 [B, 2, 2]; ``positions[i, 0]`` and ``positions[i, 1]`` are the UTM
                (east, north) of the images of ``view_a[i]`` and ``view_b[i]`` (MoCo v2 uses them to
                keep queue keys of the query's place out of its negatives; other methods ignore them).
        Returns:
            The scalar loss, ready for ``backward()``.
        """
        raise NotImplementedError(f"method '{self.name}' trains on triplets: call loss_triplets")

    def loss_triplets(self, query: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
        """Loss of a batch of triplets (the supervised baseline): query/positive [B, 3, H, W],
        negatives [B, M, 3, H, W]."""
        raise NotImplementedError(f"method '{self.name}' trains on GeoPairs: call loss_pairs")

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        """Call after every ``optimizer.step()`` with the global step (0-based) and the total
        number of steps: momentum encoders and schedules update here. No-op by default."""

    def sync_momentum(self) -> None:
        """Copy ``model`` into the momentum encoder, if the method has one. No-op by default."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer should update (frozen stages and momentum copies excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    # -- helpers for subclasses --------------------------------------------------------------
    @staticmethod
    def _check_pairs(view_a: Tensor, view_b: Tensor, positions: Tensor) -> None:
        if view_a.ndim != 4 or view_a.shape != view_b.shape:
            raise ValueError(f"view_a and view_b must both be [B, 3, H, W], got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
        if view_a.shape[0] < 2:
            raise ValueError("a GeoPair batch needs at least 2 pairs (batch statistics and negatives)")
        if positions.shape != (view_a.shape[0], 2, 2):
            raise ValueError(f"positions must be [B, 2, 2] = [{view_a.shape[0]}, 2, 2], got {tuple(positions.shape)}")


def check(condition: bool, message: str) -> None:
    """Raise ``ConfigError`` (a ``VgsslError`` and ``ValueError``) with ``message`` unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def check_momentum(name: str, momentum: float, momentum_end: float, momentum_schedule: str) -> None:
    check(0.0 <= momentum <= 1.0, f"{name}: momentum must be in [0, 1], got {momentum}")
    check(0.0 <= momentum_end <= 1.0, f"{name}: momentum_end must be in [0, 1], got {momentum_end}")
    check(momentum_schedule in MOMENTUM_SCHEDULES,
          f"{name}: momentum_schedule is {momentum_schedule!r}; choose one of {', '.join(MOMENTUM_SCHEDULES)}")


class MomentumMethod(Method):
    """A method with a momentum (EMA) copy ``momentum_model`` of ``model`` (MoCo v2, BYOL).

    The copy exists from construction (so checkpoints always hold the same keys) but is
    *synchronised* with ``model`` by ``sync_momentum()``, which ``loss_pairs`` calls by itself
    before the first step unless the persistent ``momentum_synced`` flag is already set (e.g.
    by a resumed checkpoint). So whatever is done to ``method.model`` before training starts,
    such as the NetVLAD k-means initialisation, reaches the momentum encoder.

    The momentum follows ``momentum_schedule``: "constant" keeps ``momentum``; "cosine" goes
    from ``momentum`` to ``momentum_end`` over training (BYOL, Grill et al. 2020).
    """

    def __init__(self, model: DescriptorModel, momentum: float, momentum_end: float, momentum_schedule: str):
        super().__init__(model)
        check_momentum(self.name, momentum, momentum_end, momentum_schedule)
        self.momentum, self.momentum_end, self.momentum_schedule = momentum, momentum_end, momentum_schedule
        self.momentum_model = copy.deepcopy(model)
        deactivate_requires_grad(self.momentum_model)
        self.register_buffer("momentum_synced", torch.tensor(False))
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_synced_seen", False))
        self.current_momentum = momentum

    @torch.no_grad()
    def sync_momentum(self) -> None:
        self.momentum_model.load_state_dict(self.model.state_dict())
        self.momentum_synced.fill_(True)

    def _ensure_synced(self) -> None:
        # the buffer is read once (on a GPU each read waits for the device), then the Python flag
        if getattr(self, "_synced_seen", False):
            return
        if not bool(self.momentum_synced):
            self.sync_momentum()
        self._synced_seen = True

    def momentum_at(self, step: int, max_steps: int) -> float:
        if self.momentum_schedule == "constant":
            return float(self.momentum)
        return cosine_schedule(step, max_steps, self.momentum, self.momentum_end)

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        """EMA update: momentum_params = m * momentum_params + (1 - m) * params."""
        self._ensure_synced()
        self.current_momentum = self.momentum_at(step, max_steps)
        update_momentum(self.model, self.momentum_model, m=self.current_momentum)
