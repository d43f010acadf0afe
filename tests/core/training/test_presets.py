"""The paper presets are the published settings, `vgssl config show|list`, and what they build."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from testkit import run_cli
from vgssl_core.data.transforms import resolve_augment_config
from vgssl_core.errors import VgsslError
from vgssl_core.methods import build_method
from vgssl_core.models.network import build_model
from vgssl_core.training.config import load_config, presets
from vgssl_core.training.module import VgsslModule

# The arXiv tables' strategies: METHOD-FC-L-D-r on ResNet-50 conv4 + NetVLAD, B=64, Adam lr 1e-5
# (the authors' parser.py:131; our copy of the paper lost the digits), 10,000 queries per epoch.
ARXIV = {  # preset: (method, L, D, r)
    "arxiv-simclr-fc-1-2048-1": ("simclr", 1, 2048, 1.0),
    "arxiv-simclr-fc-2-2048-1": ("simclr", 2, 2048, 1.0),
    "arxiv-mocov2-fc-1-2048-1": ("mocov2", 1, 2048, 1.0),
    "arxiv-mocov2-fc-2-2048-1": ("mocov2", 2, 2048, 1.0),
    "arxiv-byol-fc-1-2048-0.25": ("byol", 1, 2048, 0.25),
    "arxiv-byol-fc-2-2048-0.25": ("byol", 2, 2048, 0.25),
    "arxiv-byol-fc-2-2048-0.5": ("byol", 2, 2048, 0.5),
    "arxiv-simsiam-fc-1-2048-0.25": ("simsiam", 1, 2048, 0.25),
    "arxiv-simsiam-fc-2-2048-0.25": ("simsiam", 2, 2048, 0.25),
    "arxiv-simsiam-fc-2-2048-0.5": ("simsiam", 2, 2048, 0.5),
    "arxiv-bt-fc-2-2048-1": ("barlow_twins", 2, 2048, 1.0),
    "arxiv-bt-fc-2-4096-1": ("barlow_twins", 2, 4096, 1.0),
    "arxiv-vicreg-fc-2-2048-1": ("vicreg", 2, 2048, 1.0),
    "arxiv-vicreg-fc-2-4096-1": ("vicreg", 2, 4096, 1.0),
}
# The WACV final runs (train_msls_*_final_sbatch.sh): (method, PROJ, LAY) for R50 (BATCH 64, FC 1024)
# and for the distilled DeiT-S (BATCH 32, FC 256).
WACV_R50 = {"simclr": (2048, 1), "mocov2": (2048, 1), "byol": (2048, 2), "simsiam": (2048, 2),
            "bt": (2048, 2), "vicreg": (2048, 2)}
WACV_DEIT = {"simclr": (1024, 1), "mocov2": (2048, 0), "byol": (4096, 2), "simsiam": (4096, 2),
             "bt": (2048, 2), "vicreg": (4096, 2)}
METHOD = {"bt": "barlow_twins"}


def shown(capsys, preset, *overrides):
    """The resolved config `vgssl config show` prints, parsed back."""
    capsys.readouterr()
    assert run_cli("config", "show", preset, *overrides) == 0
    return yaml.safe_load(capsys.readouterr().out)


def key_fields(cfg):
    m, d = cfg["model"], cfg["data"]
    return {"method": cfg["method"], "backbone": m["backbone"], "layer": m["layer"], "aggregation": m["aggregation"],
            "fc_dim": m["fc_dim"], "search_projection": m["search_projection"], "L": m["head_layers"],
            "D": m["head_dim"], "r": d["db_negative_ratio"], "B": d["batch_size"], "lr": cfg["optim"]["name"] + " "
            + str(cfg["optim"]["lr"]), "wd": cfg["optim"]["weight_decay"], "queries": d["queries_per_epoch"],
            "size": m["image_size"], "augment": d["augment"]["name"], "positive": d["positive"],
            "weights": m["weights"], "freeze": m["freeze_stages"], "epochs": cfg["trainer"]["max_epochs"]}


@pytest.mark.parametrize("preset", sorted(ARXIV))
def test_arxiv_presets_are_the_papers_strategies(capsys, preset):
    method, layers, dim, ratio = ARXIV[preset]
    assert key_fields(shown(capsys, preset)) == {
        "method": method, "backbone": "resnet50", "layer": "conv4", "aggregation": "netvlad", "fc_dim": 0,
        "search_projection": True, "L": layers, "D": dim, "r": ratio, "B": 64, "lr": "adam 1e-05", "wd": 0.0,
        "queries": 10000, "size": [480, 640], "augment": "reference", "positive": "uniform",
        "weights": "auto", "freeze": 3, "epochs": 100}


@pytest.mark.parametrize("backbone,method", [(b, m) for b in ("r50", "deits") for m in WACV_R50])
def test_wacv_presets_are_the_authors_final_runs(capsys, backbone, method):
    cfg = shown(capsys, f"wacv-{backbone}-{method}")
    proj, lay = (WACV_R50 if backbone == "r50" else WACV_DEIT)[method]
    r50 = backbone == "r50"
    assert key_fields(cfg) == {
        "method": METHOD.get(method, method), "backbone": "resnet50" if r50 else "deit_s_distilled",
        "layer": "conv5" if r50 else "conv4",  # `layer` does not apply to DeiT
        "aggregation": "gem" if r50 else "distilled", "fc_dim": 1024 if r50 else 256, "search_projection": False,
        "L": lay, "D": proj, "r": 0.0, "B": 64 if r50 else 32, "lr": "adam 1e-05", "wd": 0.0, "queries": 10000,
        "size": [480, 640], "augment": "reference" if r50 else "none", "positive": "feature-nearest",
        "weights": "auto", "freeze": 0, "epochs": 200 if r50 else 1000}


def test_reference_method_settings_in_every_paper_preset(capsys):
    for preset in [*ARXIV, *(f"wacv-{b}-{m}" for b in ("r50", "deits") for m in WACV_R50)]:
        cfg = shown(capsys, preset)
        model, hyper = cfg["model"], cfg["method_config"]
        assert model["head_bias_before_bn"] is False, preset
        assert model["head_final_bias"] is (cfg["method"] not in ("barlow_twins", "vicreg")), preset
        if cfg["method"] in ("byol", "simsiam"):
            assert hyper["predictor_hidden_dim"] == 4096, preset
        if cfg["method"] == "barlow_twins":
            assert hyper["lambda_param"] == 0.0051, preset


def test_no_preset_claims_a_paper_name_without_its_settings():
    names = set(presets())
    assert {n for n in names if n.startswith("arxiv-")} == set(ARXIV)
    assert {n for n in names if n.startswith("wacv-")} == {f"wacv-{b}-{m}" for b in ("r50", "deits") for m in WACV_R50}
    assert not {n for n in names if n.startswith(("simclr-", "mocov2-", "byol-", "simsiam-", "bt-", "vicreg-",
                                                  "r50-gem-", "deits-"))}


def test_config_list_names_every_preset_with_its_source(capsys):
    assert run_cli("config", "list") == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert set(lines) == set(presets())
    assert all("arXiv:2308.00090" in lines[n] for n in ARXIV)
    assert all("WACV 2025 final run" in lines[n] for n in lines if n.startswith("wacv-"))
    for name, entry in presets().items():  # every paper preset cites where its numbers come from
        if name.startswith(("arxiv-", "wacv-")):
            assert "parser.py" in entry.read_text() or "final_sbatch.sh:" in entry.read_text(), name


def test_config_show_applies_overrides_and_writes_json(capsys, tmp_path):
    cfg = shown(capsys, "wacv-r50-simclr", "optim.lr=3e-4", "data.augment.hue=0.1", "--json", tmp_path / "c.json")
    assert cfg["optim"]["lr"] == 3e-4
    assert cfg["data"]["augment"]["name"] == "reference" and cfg["data"]["augment"]["hue"] == 0.1
    assert json.loads((tmp_path / "c.json").read_text()) == cfg


@pytest.mark.parametrize("args,message", [
    (["config", "show", "simclr-fc-1-2048-1"], "strategy preset 'simclr-fc-1-2048-1' not found"),
    (["config", "show", "demo-simclr", "data.augment=fancy"], "unknown augmentation 'fancy'; choose one of reference, strong, none"),
    (["config", "show", "demo-simclr", "data.augment.sharpness=2"], "unknown augmentation key 'sharpness'"),
    (["config", "show", "demo-simclr", "data.augment.batch_hflip_p=2"], "augment.batch_hflip_p is a probability"),
    (["config", "show", "demo-simclr", "model.backbone=deit_s_distilled"], "go together"),
])
def test_bad_presets_and_values_are_one_line_errors(capsys, args, message):
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_demo_presets_keep_the_settings_they_were_measured_with():
    for method in ("simclr", "mocov2", "byol", "simsiam", "bt", "vicreg", "triplet"):
        cfg = load_config(f"demo-{method}")
        assert cfg["data"]["augment"] == resolve_augment_config("strong")
        assert cfg["data"]["augment"]["hflip_p"] == 0.5 and cfg["data"]["augment"]["crop_scale"] == 0.4
        if cfg["model"]["head_batchnorm"]:
            assert cfg["model"]["head_bias_before_bn"] and cfg["model"]["head_final_bias"]
    assert load_config("demo-byol")["method_config"]["predictor_hidden_dim"] is None
    assert load_config("demo-bt")["method_config"]["lambda_param"] == 0.005


# -- what the settings build ---------------------------------------------------------------

def test_augmentation_sets():
    ref, strong, none = (resolve_augment_config(n) for n in ("reference", "strong", "none"))
    assert (ref["crop_scale"], ref["hflip_p"], ref["batch_hflip_p"], ref["brightness"], ref["rotation_deg"]) == (
        0.25, 0.0, 0.5, 0.0, 0.0)
    assert strong["hflip_p"] == 0.5 and strong["batch_hflip_p"] == 0.0 and strong["brightness"] == 0.4
    assert all(v in (0.0, False, "none") for v in none.values())
    assert load_config(None)["data"]["augment"]["name"] == "reference"  # the default
    with pytest.raises(VgsslError, match="unknown augmentation 'fancy'"):
        resolve_augment_config("fancy")


def test_batch_flip_flips_every_image_of_a_batch_or_none_repeatably():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    batch = (images, images + 1, torch.tensor([4, 5]))

    def flip_at(step, p=0.5, seed=0):
        module = SimpleNamespace(cfg={"data": {"augment": {"batch_hflip_p": p}}, "trainer": {"seed": seed}},
                                 global_step=step)
        return VgsslModule._batch_flip(module, batch)

    flipped = []
    for step in range(40):
        a, b, places = flip_at(step)
        assert torch.equal(places, batch[2])
        both = torch.equal(a, images.flip(-1)) and torch.equal(b, (images + 1).flip(-1))
        neither = torch.equal(a, images) and torch.equal(b, images + 1)
        assert both or neither  # one decision for the whole batch, both views alike
        assert torch.equal(flip_at(step)[0], a)  # a function of (seed, step): a resume replays it
        flipped.append(both)
    assert 8 < sum(flipped) < 32
    assert not any(torch.equal(flip_at(s, p=0.0)[0], images.flip(-1)) for s in range(10))


def test_heads_have_the_reference_biases():
    small = {"backbone": "resnet18", "weights": "random", "image_size": [64, 64], "head_dim": 32}
    bt = build_method("barlow_twins", {**small, "head_layers": 2}).model.head.layers
    linears = [m for m in bt if isinstance(m, torch.nn.Linear)]
    assert [lin.bias is not None for lin in linears] == [False, False]  # before BN, and BT's last
    simclr = build_method("simclr", {**small, "head_layers": 2}).model.head.layers
    assert all(m.bias is not None for m in simclr if isinstance(m, torch.nn.Linear))  # no BN, SimCLR's last
    byol = build_method("byol", {**small, "head_layers": 2})
    assert [m.bias is not None for m in byol.model.head.layers if isinstance(m, torch.nn.Linear)] == [False, True]
    assert byol.predictor.layers[0].out_features == 4096


def test_wacv_r50_searches_the_fc_descriptor_and_trains_on_the_projection():
    torch.manual_seed(0)
    model = build_model({"backbone": "resnet18", "layer": "conv5", "aggregation": "gem", "fc_dim": 48,
                         "search_projection": False, "head_layers": 1, "head_dim": 80, "weights": "random",
                         "image_size": [64, 64]}).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 80) and model.embedding_dim == 80
    searched = model.retrieval_descriptor(x)
    assert searched.shape == (2, 48) and model.descriptor_dim == 48
    agg = model.aggregation
    by_hand = F.normalize(agg.fc(agg.pool(model.backbone(x))), dim=1)
    assert torch.allclose(searched, by_hand, atol=1e-6)
    assert torch.allclose(model.head(by_hand), model(x), atol=1e-5)  # the projector sits on the descriptor


def test_distilled_deit_descriptor_averages_the_class_and_distillation_heads():
    torch.manual_seed(0)
    model = build_model({"backbone": "deit_s_distilled", "aggregation": "distilled", "fc_dim": 256,
                         "search_projection": False, "head_layers": 0, "weights": "random",
                         "image_size": [64, 96]}).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = model.backbone.vit.forward_features(x)
        agg = model.aggregation
        by_hand = F.normalize((agg.head(tokens[:, 0]) + agg.head_dist(tokens[:, 1])) / 2, dim=1)
        assert torch.allclose(model.retrieval_descriptor(x), by_hand, atol=1e-5)
    assert type(model.backbone.vit).__name__ == "VisionTransformerDistilled"
    assert "random initialisation" in model.init_note


# -- a few steps of each paper family on the tiny world ------------------------------------------

TINY = ["--quiet", "--max-steps", "2", "model.image_size=[32,48]", "model.weights=random", "data.batch_size=4",
        "data.workers=0", "data.queries_per_epoch=8", "trainer.val_split=null", "trainer.eval_batch_size=16"]


@pytest.mark.parametrize("preset,extra", [
    ("arxiv-bt-fc-2-4096-1", ["model.netvlad_clusters=8", "trainer.test_split=null"]),
    ("wacv-r50-mocov2", ["method_config.queue_size=64", "trainer.test_split=null"]),
    ("wacv-deits-byol", []),
])
def test_each_paper_family_trains_a_few_steps(tiny_world, tmp_path, preset, extra):
    out = tmp_path / preset
    assert run_cli("train", "--config", preset, "--data", tiny_world, "--out", out, *TINY, *extra) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["name"] == preset
    assert summary["init"]["init"] == "random" and "sha256" not in summary["init"]
    if (out / "test.json").exists():
        test = json.loads((out / "test.json").read_text())
        assert test["init"] == summary["init"]
        assert test["descriptor_dim"] == 256  # the distilled heads' output is searched, not the 4096-d projector


def test_a_checkpoint_from_before_the_head_bias_keys_still_loads(tmp_path):
    from vgssl_core.models.loading import load_descriptor_model

    old_cfg = {"backbone": "resnet18", "weights": "random", "image_size": [32, 32], "head_layers": 2,
               "head_dim": 16, "head_batchnorm": True, "head_bias_before_bn": True}
    model = build_model(old_cfg)
    stored = {k: v for k, v in model.config.items() if k not in ("head_bias_before_bn", "head_final_bias",
                                                                   "fc_dim", "search_projection")}
    torch.save({"vgssl": {"format": 1, "model_config": stored, "model_prefix": ""},
                "state_dict": model.state_dict()}, tmp_path / "old.ckpt")
    loaded, cfg, _ = load_descriptor_model(tmp_path / "old.ckpt")
    assert cfg["head_bias_before_bn"] is True
    assert torch.equal(loaded.head.layers[0].bias, model.head.layers[0].bias)
