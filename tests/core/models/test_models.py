"""Descriptor models: shapes, heads, config validation, initial weights, NetVLAD init."""

from __future__ import annotations

import hashlib
import io
import logging
import math

import pytest
import torch
import torchvision
from torch import nn

from vgssl_core.errors import VgsslError
from vgssl_core.models import (
    DEFAULT_MODEL_CONFIG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    GeM,
    NetVLAD,
    build_model,
    build_projection_head,
    init_record,
    resolve_model_config,
)


def make(**cfg):
    return build_model({"weights": "random", **cfg})


def images(b=2, h=64, w=64):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0))


# -- shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "backbone, layer, aggregation, dim",
    [
        ("resnet18", "conv4", "gem", 256),
        ("resnet18", "conv5", "mac", 512),
        ("resnet18", "conv4", "netvlad", 4 * 256),
        ("resnet50", "conv4", "gem", 1024),
        ("resnet50", "conv5", "mac", 2048),
    ],
)
def test_descriptor_shape_per_backbone_layer_and_aggregation(backbone, layer, aggregation, dim):
    model = make(backbone=backbone, layer=layer, aggregation=aggregation, netvlad_clusters=4).eval()
    with torch.no_grad():
        out = model(images())
    assert out.shape == (2, dim) and model.descriptor_dim == dim
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("aggregation, dim", [("gem", 384), ("netvlad", 4 * 384)])
def test_deit_works_on_non_square_images(aggregation, dim):
    model = make(backbone="deit_s", aggregation=aggregation, netvlad_clusters=4, image_size=[96, 128]).eval()
    x = images(2, 96, 128)
    with torch.no_grad():
        assert model.backbone(x).shape == (2, 384, 6, 8)  # patch tokens as a 96/16 x 128/16 map
        assert model(x).shape == (2, dim)


def test_head_sets_descriptor_dim_and_no_head_is_identity():
    assert make(head_layers=2, head_dim=48, head_batchnorm=True)(images(3)).shape == (3, 48)
    model = make(head_layers=0, head_dim=48)
    assert isinstance(model.head, nn.Identity) and model.descriptor_dim == 256


def layer_types(head):
    return [type(m) for m in head.layers]


def test_fc1_head_has_no_batchnorm():
    assert layer_types(build_projection_head(256, 1, 64, batchnorm=True)) == [nn.Linear]
    assert layer_types(build_projection_head(256, 1, 64, batchnorm=False)) == [nn.Linear]


def test_fc2_head_has_batchnorm_and_relu_only_between_layers():
    head = build_projection_head(256, 2, 64, batchnorm=True)
    assert layer_types(head) == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.layers[0].in_features == 256 and head.layers[3].out_features == 64


def test_head_without_batchnorm_has_relu_between_layers():
    head = build_projection_head(256, 3, 64, batchnorm=False)
    assert layer_types(head) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_forward_is_unnormalised_and_retrieval_descriptor_follows_config():
    model = make(head_layers=1, head_dim=32).eval()
    x = images()
    with torch.no_grad():
        raw, norm = model(x), model.retrieval_descriptor(x)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2))
    assert torch.allclose(norm.norm(dim=1), torch.ones(2), atol=1e-5)
    plain = make(head_layers=1, head_dim=32, normalize_descriptor=False).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain.retrieval_descriptor(x), raw)


def test_gem_exponent_is_learnable_and_starts_at_3():
    gem = make().aggregation.pool
    assert isinstance(gem, GeM) and gem.p.requires_grad and gem.p.item() == pytest.approx(3.0)


def test_preprocess_holds_imagenet_normalisation_and_image_size():
    model = make(image_size=[96, 128])
    assert model.preprocess == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "image_size": [96, 128]}
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


# -- freezing -----------------------------------------------------------------------------

def test_freeze_stages_freezes_leading_resnet_stages():
    model = make(freeze_stages=3)
    grads = {name.split(".")[0]: p.requires_grad for name, p in model.backbone.named_parameters()}
    assert grads == {"conv1": False, "bn1": False, "layer1": False, "layer2": False, "layer3": True}
    assert all(p.requires_grad for p in make(freeze_stages=0).parameters())


def test_freeze_stages_freezes_deit_embedding_and_first_blocks():
    model = make(backbone="deit_s", freeze_stages=2)
    vit = model.backbone.vit
    assert not vit.pos_embed.requires_grad and not vit.patch_embed.proj.weight.requires_grad
    assert not any(p.requires_grad for p in vit.blocks[0].parameters())
    assert all(p.requires_grad for p in vit.blocks[1].parameters())


# -- config -------------------------------------------------------------------------------

def test_resolve_fills_the_untrained_descriptor_defaults():
    cfg = resolve_model_config(None)
    assert cfg == DEFAULT_MODEL_CONFIG
    assert (cfg["backbone"], cfg["layer"], cfg["aggregation"], cfg["head_layers"]) == ("resnet18", "conv4", "gem", 0)
    assert (cfg["weights"], cfg["image_size"], cfg["normalize_descriptor"], cfg["metric"]) == ("auto", [120, 160], True, "ip")


def test_resolve_is_idempotent_and_plain_for_weights_only_checkpoints():
    cfg = resolve_model_config({"backbone": "deit_s", "image_size": (96, 128), "aggregation": "netvlad"})
    assert resolve_model_config(cfg) == cfg and cfg["image_size"] == [96, 128]
    buffer = io.BytesIO()
    torch.save({"model_config": cfg}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["model_config"] == cfg


@pytest.mark.parametrize(
    "partial, words",
    [
        ({"backbon": "resnet18"}, ["backbon", "valid keys", "backbone"]),
        ({"backbone": "vgg16"}, ["backbone", "vgg16", "resnet18", "resnet50", "deit_s"]),
        ({"layer": "conv3"}, ["layer", "conv4", "conv5"]),
        ({"aggregation": "avg"}, ["aggregation", "gem", "mac", "netvlad"]),
        ({"head_layers": -1}, ["head_layers", ">= 0"]),
        ({"head_dim": True}, ["head_dim"]),
        ({"netvlad_clusters": 0}, ["netvlad_clusters"]),
        ({"head_batchnorm": 1}, ["head_batchnorm", "true or false"]),
        ({"image_size": [120]}, ["image_size", "[height, width]"]),
        ({"image_size": [16, 160]}, ["image_size"]),
        ({"metric": "cos"}, ["metric", "ip", "l2"]),
        ({"pretrained": "places"}, ["pretrained", "weights", "imagenet", "random"]),
        ({"freeze_stages": 5}, ["freeze_stages", "0..4"]),
        ({"weights": 3}, ["weights", "imagenet", "random", "auto", "file path"]),
        ({"weights": ""}, ["weights"]),
    ],
)
def test_bad_model_config_is_a_one_line_user_error(partial, words):
    with pytest.raises(VgsslError) as err:
        resolve_model_config(partial)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert isinstance(err.value, ValueError)


def test_conv5_allows_five_frozen_stages():
    assert resolve_model_config({"layer": "conv5", "freeze_stages": 5})["freeze_stages"] == 5


# -- initial weights ----------------------------------------------------------------------

def test_weights_file_is_loaded_into_the_backbone(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = build_model({"weights": str(path), "freeze_stages": 0})
    expected = reference.state_dict()
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert str(path) in model.init_note


def test_weights_file_may_wrap_the_state_dict(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in reference.state_dict().items()}}, path)
    model = build_model({"weights": str(path)})
    assert torch.equal(model.backbone.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_mismatched_weights_file_is_a_user_error_naming_the_file(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(VgsslError, match="r50.pth"):
        build_model({"weights": str(path)})
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, foreign)
    with pytest.raises(VgsslError, match="foreign.pth.*missing keys"):
        build_model({"weights": str(foreign)})


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(VgsslError, match="not found"):
        build_model({"weights": str(tmp_path / "nope.pth")})


def test_auto_weights_fall_back_to_random_init_when_not_cached(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        model = build_model({"weights": "auto"})
    notes = [r.getMessage() for r in caplog.records if "ImageNet weights" in r.getMessage()]
    assert len(notes) == 1 and "random initialisation" in notes[0] and "\n" not in notes[0]
    assert "random initialisation" in model.init_note
    assert init_record(model)["init"] == "random" and init_record(model)["requested"] == "auto"


def test_imagenet_weights_without_any_copy_are_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for backbone in ("resnet18", "deit_s"):
        with pytest.raises(VgsslError) as err:
            build_model({"backbone": backbone, "weights": "imagenet"})
        message = str(err.value)
        assert "\n" not in message and backbone in message and str(tmp_path) in message, message
        assert "model.weights=random" in message


def test_imagenet_weights_load_from_the_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    torch.save(cached.state_dict(), path)
    for word in ("imagenet", "auto"):
        model = build_model({"weights": word})
        assert torch.equal(model.backbone.conv1.weight, cached.conv1.weight)
        assert "ImageNet weights from torchvision cache" in model.init_note
        record = init_record(model)
        assert record == {"init": "imagenet", "source": "torchvision cache", "file": str(path),
                          "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_weights_file_record_names_the_file_and_its_hash(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    record = init_record(build_model({"weights": str(path)}))
    assert record == {"init": "file", "source": "path", "file": str(path),
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert init_record(make()) == {"init": "random"}


@pytest.mark.parametrize(
    "legacy, weights",
    [
        ({"pretrained": "none"}, "random"),
        ({"pretrained": "imagenet"}, "auto"),
        ({"pretrained": "imagenet", "weights": None}, "auto"),
        ({"pretrained": "none", "weights": "/some/file.pth"}, "/some/file.pth"),  # the file always won
        ({"weights": None}, "auto"),
    ],
)
def test_configs_of_older_checkpoints_translate_to_the_weights_key(legacy, weights):
    cfg = resolve_model_config(legacy)
    assert cfg["weights"] == weights and "pretrained" not in cfg


# -- NetVLAD ------------------------------------------------------------------------------

def test_netvlad_init_sets_centroids_and_conv_weights_from_kmeans():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    features = centres.repeat(50, 1) + 0.05 * torch.randn(200, 16)
    vlad = NetVLAD(clusters=4, dim=16)
    vlad.init_netvlad_from_features(features)
    # k-means centroids lie on the data
    found = torch.nn.functional.normalize(vlad.centroids.detach(), dim=1)
    assert (found @ centres.T).max(dim=1).values.min() > 0.6
    # conv weights point at the centroids, scaled so that on average the two most likely
    # clusters of a feature get soft-assignments 1 : 0.01 (NetVLAD paper's alpha)
    weight = vlad.conv.weight.detach()[:, :, 0, 0]
    assert torch.allclose(torch.nn.functional.normalize(weight, dim=1), found, atol=1e-5)
    top2 = (torch.nn.functional.normalize(features, dim=1) @ weight.T).topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).mean().item() == pytest.approx(-math.log(0.01), rel=1e-4)


def test_model_netvlad_init_from_local_features():
    model = make(aggregation="netvlad", netvlad_clusters=4)
    feats = model.local_features(images(2))
    assert feats.shape == (2 * 4 * 4, 256)
    before = model.aggregation.centroids.detach().clone()
    model.init_netvlad_from_features(feats)
    assert not torch.equal(before, model.aggregation.centroids)


def test_netvlad_init_needs_a_netvlad_model_and_enough_features():
    with pytest.raises(VgsslError, match="netvlad"):
        make().init_netvlad_from_features(torch.randn(10, 256))
    with pytest.raises(VgsslError, match="at least 8"):
        NetVLAD(clusters=8, dim=4).init_netvlad_from_features(torch.randn(5, 4))


@pytest.mark.parametrize("backbone, aggregation", [("resnet18", "gem"), ("efficientnet_lite0", "netvlad")])
def test_loaded_models_are_channels_last_and_describe_as_the_plain_layout_does(backbone, aggregation):
    # NHWC is oneDNN's fast path on a CPU: the loaded model and embed_batch use it, with the same values
    from vgssl_core.evaluation.descriptors import embed_batch
    from vgssl_core.models.loading import load_descriptor_model

    model, _, _ = load_descriptor_model(None, {"backbone": backbone, "weights": "random", "aggregation": aggregation,
                                               "image_size": [48, 64]})
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    batch = torch.randn(3, 3, 48, 64)
    nhwc = embed_batch(model, batch, torch.device("cpu"))
    with torch.no_grad():
        plain = model.to(memory_format=torch.contiguous_format).retrieval_descriptor(batch.contiguous()).numpy()
    assert nhwc.shape == plain.shape
    torch.testing.assert_close(torch.from_numpy(nhwc), torch.from_numpy(plain), rtol=1e-4, atol=1e-5)
