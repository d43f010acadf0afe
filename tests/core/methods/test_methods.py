"""Training methods: losses, momentum encoders, MoCo's place-aware queue, configs."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from vgssl_core.errors import VgsslError
from vgssl_core.methods import (
    METHODS,
    SSL_METHODS,
    BYOL,
    MoCoV2,
    SimCLR,
    build_method,
    canonical_method_name,
    default_method_config,
    model_config_for_method,
    resolve_method_config,
)
from vgssl_core.models import build_model

SMALL = {"pretrained": "none", "head_dim": 32}


def batch(b=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randn(b, 3, size, size, generator=g), spread(b)


EAST, NORTH = 396000.0, 4991000.0  # UTM of a place; float64 keeps centimetres at these magnitudes


def at(*offsets):
    """UTM positions [N, 2] (float64) at (east, north) offsets in metres from one place."""
    return torch.tensor([[EAST + dx, NORTH + dy] for dx, dy in offsets], dtype=torch.float64)


def spread(b, gap=100.0):
    """GeoPair positions [B, 2, 2] of ``b`` pairs ``gap`` metres apart (each pair's images 5 m apart)."""
    a = at(*[(i * gap, 0.0) for i in range(b)])
    return torch.stack([a, a + torch.tensor([5.0, 0.0], dtype=torch.float64)], dim=1)


def small_method(name, model_cfg=None, method_cfg=None):
    if name == "mocov2":
        method_cfg = {"queue_size": 16, **(method_cfg or {})}
    return build_method(name, {**SMALL, **(model_cfg or {})}, method_cfg)


# -- every method -------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(METHODS))
def test_loss_is_finite_and_backward_reaches_the_model(name):
    torch.manual_seed(0)
    method = small_method(name).train()
    a, b, ids = batch()
    if method.batch_kind == "pairs":
        loss = method.loss_pairs(a, b, ids)
    else:
        loss = method.loss_triplets(a, b, torch.randn(4, 2, 3, 64, 64))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in method.model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    method.after_optimizer_step(0, 10)


def test_pair_and_triplet_methods_refuse_the_other_batch_kind():
    a, b, ids = batch()
    with pytest.raises(NotImplementedError, match="loss_triplets"):
        small_method("triplet").loss_pairs(a, b, ids)
    with pytest.raises(NotImplementedError, match="loss_pairs"):
        small_method("simclr").loss_triplets(a, b, torch.randn(4, 1, 3, 64, 64))


def test_trainable_parameters_leave_out_momentum_copies_and_frozen_stages():
    method = small_method("byol", {"freeze_stages": 3})
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not any(id(p) in trainable for p in method.momentum_model.parameters())
    assert not any(id(p) in trainable for p in method.model.backbone.layer1.parameters())
    assert all(id(p) in trainable for p in method.predictor.parameters())
    assert all(id(p) in trainable for p in method.model.head.parameters())


# -- heads per method ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, layers, batchnorm",
    [("simclr", 1, False), ("mocov2", 1, False), ("byol", 2, True), ("simsiam", 2, True),
     ("barlow_twins", 2, True), ("vicreg", 2, True), ("triplet", 0, False)],
)
def test_head_defaults_come_from_the_method(name, layers, batchnorm):
    cfg = model_config_for_method(name, None)
    assert (cfg["head_layers"], cfg["head_batchnorm"]) == (layers, batchnorm)


def test_strategy_presets_get_the_methods_batchnorm_setting():
    simclr = small_method("simclr", {"head_layers": 2})  # SimCLR-FC-2-32: ReLU, no BN
    assert [type(m).__name__ for m in simclr.model.head.layers] == ["Linear", "ReLU", "Linear"]
    bt = small_method("barlow_twins", {"head_layers": 2})  # BT-FC-2-32: BN + ReLU between
    assert [type(m).__name__ for m in bt.model.head.layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert small_method("byol", {"head_batchnorm": False}).model.config["head_batchnorm"] is False  # user wins


# -- configs ------------------------------------------------------------------------------

def test_default_configs_are_plain_and_survive_a_weights_only_checkpoint():
    configs = {name: default_method_config(name) for name in METHODS}
    buffer = io.BytesIO()
    torch.save(configs, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == configs
    assert configs["mocov2"]["temperature"] == 0.07 and configs["barlow_twins"]["lambda_param"] == 0.0051
    assert (configs["vicreg"]["lambda_param"], configs["vicreg"]["mu_param"], configs["vicreg"]["nu_param"]) == (25.0, 25.0, 1.0)
    assert configs["triplet"]["margin"] == 0.1


def test_unknown_method_config_key_names_the_valid_keys():
    with pytest.raises(VgsslError, match="unknown simclr config key 'temp'; valid keys: temperature"):
        resolve_method_config("simclr", {"temp": 0.1})


def test_method_config_types_are_checked():
    with pytest.raises(VgsslError, match="temperature"):
        resolve_method_config("simclr", {"temperature": "hot"})
    with pytest.raises(VgsslError, match="queue_size"):
        resolve_method_config("mocov2", {"queue_size": 1.5})
    assert resolve_method_config("byol", {"predictor_hidden_dim": 64})["predictor_hidden_dim"] == 64
    assert resolve_method_config("simclr", {"temperature": 1})["temperature"] == 1.0


def test_method_names_accept_aliases_and_list_choices_when_unknown():
    assert canonical_method_name("BT") == "barlow_twins" and canonical_method_name("MoCo") == "mocov2"
    with pytest.raises(VgsslError, match="unknown method 'swav'; choose one of simclr, mocov2"):
        build_method("swav")
    assert set(SSL_METHODS) | {"triplet"} == set(METHODS)


@pytest.mark.parametrize(
    "name, bad",
    [("simclr", {"temperature": 0.0}), ("mocov2", {"momentum": 1.5}), ("byol", {"momentum_schedule": "linear"}),
     ("mocov2", {"queue_size": 0}), ("vicreg", {"eps": 0.0}), ("triplet", {"margin": -0.1}),
     ("simsiam", {"predictor_hidden_dim": 0})],
)
def test_bad_hyperparameters_are_user_errors(name, bad):
    with pytest.raises(VgsslError, match=next(iter(bad))):
        small_method(name, None, bad)


# -- momentum -----------------------------------------------------------------------------

def test_momentum_update_moves_the_target_by_the_expected_amount():
    method = small_method("byol", None, {"momentum": 0.9})
    method.sync_momentum()
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(1.0)
    online = [p.detach().clone() for p in method.model.parameters()]
    target = [p.detach().clone() for p in method.momentum_model.parameters()]
    method.after_optimizer_step(3, 10)
    for new, old, cur in zip(method.momentum_model.parameters(), target, online):
        assert torch.allclose(new, 0.9 * old + 0.1 * cur, atol=1e-6)
    assert method.current_momentum == 0.9


def test_cosine_momentum_schedule_goes_from_base_to_end():
    method = small_method("byol", None, {"momentum": 0.99, "momentum_schedule": "cosine"})
    assert method.momentum_at(0, 101) == pytest.approx(0.99)
    assert method.momentum_at(50, 101) == pytest.approx(0.995)
    assert method.momentum_at(100, 101) == pytest.approx(1.0)


def test_netvlad_init_reaches_the_momentum_encoder():
    for name in ("mocov2", "byol"):
        method = small_method(name, {"aggregation": "netvlad", "netvlad_clusters": 4})
        a, b, ids = batch()
        method.model.init_netvlad_from_features(method.model.local_features(a))
        centroids = method.model.aggregation.centroids
        assert not torch.equal(method.momentum_model.aggregation.centroids, centroids)
        method.train().loss_pairs(a, b, ids)  # first step syncs the momentum copy by itself
        assert torch.equal(method.momentum_model.aggregation.centroids, centroids)
        assert torch.equal(method.momentum_model.aggregation.conv.weight, method.model.aggregation.conv.weight)


def test_explicit_sync_momentum_and_persistent_flag():
    method = small_method("mocov2", {"aggregation": "netvlad", "netvlad_clusters": 4})
    method.model.init_netvlad_from_features(method.model.local_features(batch()[0]))
    method.sync_momentum()
    assert torch.equal(method.momentum_model.aggregation.centroids, method.model.aggregation.centroids)
    state = method.state_dict()
    assert bool(state["momentum_synced"]) and "momentum_model.aggregation.centroids" in state
    resumed = small_method("mocov2", {"aggregation": "netvlad", "netvlad_clusters": 4})
    resumed.load_state_dict(state)
    with torch.no_grad():  # the resumed target must not be overwritten by a new sync
        resumed.momentum_model.aggregation.centroids.add_(1.0)
    resumed.train().loss_pairs(*batch())
    assert not torch.equal(resumed.momentum_model.aggregation.centroids, resumed.model.aggregation.centroids)


# -- MoCo v2 queue ------------------------------------------------------------------------

def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_moco_masks_queue_keys_by_true_distance_across_grid_cells():
    # the query sits 1 m west of a 25 m grid line (x = 24 m in the old grid's cell 0); keys at 24 m
    # and 26 m from it both lie in the next cell: only the one within 25 m is the same place
    method = small_method("mocov2", None, {"queue_size": 4})
    query = at((24.0, 0.0))
    method.enqueue(unit(4, 32, 3), at((48.0, 0.0), (50.0, 0.0), (24.0, 24.0), (24.0, -26.0)))
    assert method.same_place(query).tolist() == [[True, False, True, False]]
    assert not method.same_place(at((5000.0, 0.0))).any()
    # unfilled queue entries (position NaN) are never masked
    fresh = small_method("mocov2", None, {"queue_size": 4})
    assert not fresh.same_place(query).any()


def test_moco_queue_keys_of_the_same_place_are_not_negatives():
    masked = small_method("mocov2", None, {"queue_size": 8})
    unmasked = small_method("mocov2", None, {"queue_size": 8, "mask_same_place": False})
    q, k = unit(4, 32, 1), unit(4, 32, 2)
    here = at(*[(0.0, 0.0)] * 4)
    for method in (masked, unmasked):
        method.enqueue(unit(8, 32, 3), at(*[(3.0 * i, 0.0) for i in range(8)]))  # all within 21 m
    assert masked.info_nce(q, k, here).item() == pytest.approx(0.0, abs=1e-6)  # only the positive is left
    assert unmasked.info_nce(q, k, here).item() > 0.1
    # keys of other places still count as negatives
    far = at(*[(0.0, 1000.0)] * 4)
    assert masked.info_nce(q, k, far).item() == pytest.approx(unmasked.info_nce(q, k, here).item())


def test_moco_masking_in_a_training_step():
    torch.manual_seed(0)
    masked = small_method("mocov2", None, {"queue_size": 8}).train()
    unmasked = small_method("mocov2", None, {"queue_size": 8, "mask_same_place": False})
    unmasked.train().load_state_dict(masked.state_dict())
    a, b, _ = batch()
    here = spread(4, gap=1.0)  # four pairs within a few metres: one place
    for method in (masked, unmasked):
        method.enqueue(unit(8, 32, 5), at(*[(2.0, 0.0)] * 8))
    loss_masked, loss_unmasked = masked.loss_pairs(a, b, here), unmasked.loss_pairs(a, b, here)
    assert loss_masked.item() == pytest.approx(0.0, abs=1e-6) and loss_unmasked.item() > 0
    loss_masked.backward()  # -inf logits leave finite gradients
    assert all(torch.isfinite(p.grad).all() for p in masked.model.parameters() if p.grad is not None)


def test_moco_enqueues_keys_with_their_positions_and_wraps_around():
    method = small_method("mocov2", None, {"queue_size": 6}).train()
    a, b, _ = batch()
    first, second = spread(4), spread(4) + 1000.0
    method.loss_pairs(a, b, first)
    method.loss_pairs(a, b, second)
    # the keys' (view_b's) positions, oldest overwritten first
    expected = torch.cat([second[2:, 1], first[2:, 1], second[:2, 1]])
    assert torch.equal(method.queue_positions, expected) and int(method.queue_ptr) == 2
    assert torch.allclose(method.queue.norm(dim=1), torch.ones(6), atol=1e-5)
    with torch.no_grad():  # evaluation does not touch the queue
        method.eval().loss_pairs(a, b, spread(4) + 5000.0)
    assert torch.equal(method.queue_positions, expected)


# -- information-maximisation losses get unnormalised embeddings -----------------------------

class Spy(torch.nn.Module):
    def __init__(self, criterion):
        super().__init__()
        self.criterion, self.inputs = criterion, []

    def forward(self, z_a, z_b):
        self.inputs.append((z_a.detach(), z_b.detach()))
        return self.criterion(z_a, z_b)


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_barlow_twins_and_vicreg_see_unnormalised_embeddings(name):
    torch.manual_seed(0)
    method = small_method(name).train()
    method.criterion = Spy(method.criterion)
    a, b, ids = batch()
    method.loss_pairs(a, b, ids)
    z_a, z_b = method.criterion.inputs[0]
    assert torch.allclose(z_a, method.model(a).detach(), atol=1e-5)
    assert not torch.allclose(z_a.norm(dim=1), torch.ones(4), atol=1e-2)


def test_vicreg_loss_depends_on_embedding_scale():
    torch.manual_seed(0)
    method = small_method("vicreg").train()
    a, b, ids = batch()
    before = method.loss_pairs(a, b, ids).item()
    with torch.no_grad():
        last = method.model.head.layers[-1]
        last.weight.mul_(10.0)  # the reference's VICReg head has no final bias
    assert method.loss_pairs(a, b, ids).item() != pytest.approx(before, rel=1e-3)


# -- triplet ------------------------------------------------------------------------------

def test_triplet_loss_is_the_mean_margin_loss_on_normalised_descriptors():
    torch.manual_seed(0)
    method = small_method("triplet").eval()
    q, p, _ = batch(2)
    n = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        loss = method.loss_triplets(q, p, n)
        d = lambda x: F.normalize(method.model(x), dim=1)  # noqa: E731
        dq, dp, dn = d(q), d(p), d(n.flatten(0, 1)).view(2, 3, -1)
        manual = torch.stack([
            F.relu((dq[i] - dp[i]).norm() - (dq[i] - dn[i, j]).norm() + 0.1) for i in range(2) for j in range(3)
        ]).mean()
    assert loss.item() == pytest.approx(manual.item(), abs=1e-5)


def test_triplet_margin_comes_from_mining_margin():
    from vgssl_core.training.config import resolve_config

    torch.manual_seed(0)
    q, p, _ = batch(2)
    n = torch.randn(2, 3, 3, 64, 64)
    methods = {}
    for margin in (0.1, 0.5):
        cfg = resolve_config({"method": "triplet", "model": SMALL}, [f"mining.margin={margin}"])
        methods[margin] = build_method("triplet", cfg["model"], cfg["method_config"]).eval()
    methods[0.5].model.load_state_dict(methods[0.1].model.state_dict())  # the same network, two margins
    with torch.no_grad():
        low, high = (methods[m].loss_triplets(q, p, n).item() for m in (0.1, 0.5))
    assert methods[0.5].config["margin"] == 0.5
    assert high > low  # every hinge term grows by up to 0.4 and none can shrink
    with pytest.raises(VgsslError, match="mining.margin' must be > 0"):
        resolve_config({"method": "triplet"}, ["mining.margin=0"])


# -- learning -----------------------------------------------------------------------------

def test_simclr_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    method = SimCLR(build_model({**SMALL, "head_layers": 1}), temperature=0.1).train()
    optimizer = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    a, b, ids = batch(4, 64)
    losses = []
    for step in range(6):
        loss = method.loss_pairs(a, b, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(step, 6)
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_methods_are_usable_without_the_registry():
    model = build_model({**SMALL, "head_layers": 2, "head_batchnorm": True})
    byol = BYOL(model, momentum=0.99)
    assert byol.predictor.layers[0].in_features == 32 and byol.model is model
    moco = MoCoV2(copy.deepcopy(model), queue_size=8)
    assert moco.queue.shape == (8, 32)
