"""`vgssl table`: the paper-style table from run folders, and the grid that skips finished runs."""

import csv
import io
import json

import pytest

from testkit import run_cli
from vgssl_core.training import results
from vgssl_core.training.config import load_config, resolve_preset
from vgssl_core.errors import VgsslError
from vgssl_core.training.results import build_table, collect_runs, run_grid, to_csv, to_markdown


def make_run(folder, method, *, name=None, r1=50.0, r5=70.0, r10=80.0, seed=0, data="/data/world-demo-0",
             mining="partial", attention=None, init=None):
    """A finished run folder as `vgssl train` leaves it (only the files the table reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"name": name or method, "method": method, "trainer": {"seed": seed}, "mining": {"mode": mining}}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "test.json").write_text(json.dumps({"recall": {"1": r1, "5": r5, "10": r10, "20": 90.0},
                                                  "data": data, "split": "test",
                                                  **({"init": init} if init else {})}))
    if attention is not None:
        (folder / "attention.json").write_text(json.dumps(attention))
    return folder


def dataset_folder(root):
    """The folders a training reads (the grid checks them before its first run); no images needed with
    ``fake_train``."""
    for split in ("train", "val", "test"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    return root


def row_cells(markdown, label):
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_best_is_bold_and_second_underlined_per_column(tmp_path):
    make_run(tmp_path / "a", "simclr", r1=60.0, r5=70.0)
    make_run(tmp_path / "b", "byol", r1=55.0, r5=90.0)
    make_run(tmp_path / "c", "vicreg", r1=40.0, r5=80.0)
    md = to_markdown(build_table(collect_runs([tmp_path])))
    simclr, byol, vicreg = (row_cells(md, m) for m in ("SimCLR", "BYOL", "VICReg"))
    # columns: method, strategy, category, init, seeds, R@1, R@5, R@10
    assert simclr[5] == "**60.0**" and byol[5] == "<u>55.0</u>" and vicreg[5] == "40.0"
    assert byol[6] == "**90.0**" and vicreg[6] == "<u>80.0</u>" and simclr[6] == "70.0"
    assert all(row[7] == "**80.0**" for row in (simclr, byol, vicreg))  # a three-way tie: all best, none second


def test_rows_follow_the_papers_categories(tmp_path):
    for i, method in enumerate(["triplet", "vicreg", "simsiam", "mocov2", "barlow_twins", "simclr", "byol"]):
        make_run(tmp_path / f"r{i}", method, r1=10.0 + i)
    table = build_table(collect_runs([tmp_path]))
    assert [r.label for r in table.rows] == ["SimCLR", "MoCo v2", "BYOL", "SimSiam", "BT", "VICReg",
                                             "Triplet (partial mining)"]
    assert [r.category for r in table.rows] == ["contrastive"] * 2 + ["self-distillation"] * 2 + [
        "information maximization"] * 2 + ["supervised"]


def test_seeds_give_mean_and_sample_std(tmp_path):
    make_run(tmp_path / "s0", "simclr", r1=40.0, seed=0)
    make_run(tmp_path / "s1", "simclr", r1=50.0, seed=1)
    make_run(tmp_path / "t", "triplet", r1=44.0, mining="full")
    table = build_table(collect_runs([tmp_path]))
    simclr = table.rows[0]
    assert simclr.seeds == 2 and simclr.mean("world-demo-0|R@1") == 45.0
    assert simclr.std("world-demo-0|R@1") == pytest.approx(7.0711, abs=1e-4)
    md = to_markdown(table)
    assert row_cells(md, "SimCLR")[5] == "**45.0 ± 7.1**"
    assert row_cells(md, "Triplet (full mining)")[5] == "<u>44.0</u>"
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert rows[0]["method"] == "SimCLR" and rows[0]["seeds"] == "2"
    assert float(rows[0]["world-demo-0 R@1 mean"]) == 45.0 and float(rows[0]["world-demo-0 R@1 std"]) > 7
    assert rows[1]["world-demo-0 R@1 std"] == ""  # one seed: no spread


def test_datasets_are_column_groups_and_geo_relevance_a_column(tmp_path):
    geo = {"geo_share": 0.6, "geo_lift": 1.5, "n_requested": 8, "target": "retrieved"}
    make_run(tmp_path / "a", "simclr", r1=60.0, attention=geo)
    make_run(tmp_path / "b", "simclr", r1=30.0, data="/data/pitts30k")
    make_run(tmp_path / "c", "byol", r1=20.0, attention={**geo, "geo_share": 0.4, "geo_lift": 1.1})
    table = build_table(collect_runs([tmp_path]))
    assert table.datasets == ["world-demo-0", "pitts30k"]
    headers = [f"{c.dataset} {c.metric}" for c in table.columns]
    assert headers == ["world-demo-0 R@1", "world-demo-0 R@5", "world-demo-0 R@10", "world-demo-0 geo %",
                       "world-demo-0 geo lift", "pitts30k R@1", "pitts30k R@5", "pitts30k R@10"]
    md = to_markdown(table)
    assert row_cells(md, "SimCLR")[8:10] == ["**60.0**", "**1.50**"]
    assert row_cells(md, "BYOL")[8:10] == ["<u>40.0</u>", "<u>1.10</u>"]
    assert row_cells(md, "BYOL")[10] == "–"  # BYOL never ran on pitts30k


def test_collect_runs_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("table", "--runs", tmp_path / "empty", "--out", tmp_path / "t") == 2
    assert "no finished runs" in capsys.readouterr().err
    assert run_cli("table", "--runs", tmp_path / "nope", "--out", tmp_path / "t") == 2
    assert "no such run folder" in capsys.readouterr().err
    make_run(tmp_path / "run", "simclr")
    assert run_cli("table", "--runs", tmp_path / "run", "--max-steps", "5", "--out", tmp_path / "t") == 2
    assert "--runs collects finished runs; it takes no --configs, --data, --max-steps" in capsys.readouterr().err
    with pytest.raises(VgsslError, match="not a finished run"):
        results.read_run(tmp_path / "empty")


def test_table_cli_writes_markdown_csv_and_json(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", "simclr", r1=60.0)
    make_run(tmp_path / "runs" / "b", "mocov2", r1=50.0)
    out, report = tmp_path / "table", tmp_path / "table.json"
    assert run_cli("table", "--runs", tmp_path / "runs", "--out", out, "--json", report) == 0
    printed = capsys.readouterr().out
    assert "| SimCLR | simclr | contrastive | unrecorded | 1 | **60.0** |" in printed
    assert (out / "table.md").read_text() in printed and (out / "table.csv").is_file()
    payload = json.loads(report.read_text())
    assert [r["method"] for r in payload["rows"]] == ["SimCLR", "MoCo v2"]
    assert payload["rows"][0]["values"]["world-demo-0 R@1"]["mean"] == 60.0


def test_a_run_reached_twice_counts_once(tmp_path):
    """`--runs runs runs/a` names run a twice: still one seed, not a mean of a with itself."""
    make_run(tmp_path / "runs" / "a", "simclr", r1=60.0)
    make_run(tmp_path / "runs" / "b", "simclr", r1=40.0, seed=1)
    runs = collect_runs([tmp_path / "runs", tmp_path / "runs" / "a", tmp_path / "runs" / ".." / "runs" / "b"])
    assert sorted(r.path.name for r in runs) == ["a", "b"]
    assert build_table(runs).rows[0].seeds == 2


def test_two_runs_of_one_strategy_and_seed_are_not_two_seeds(tmp_path, capsys):
    make_run(tmp_path / "old" / "simclr", "simclr", r1=60.0, seed=0)
    make_run(tmp_path / "new" / "simclr", "simclr", r1=40.0, seed=0)
    assert run_cli("table", "--runs", tmp_path / "old", tmp_path / "new", "--out", tmp_path / "t") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "are both simclr seed 0 on world-demo-0" in err, err


def test_the_transient_share_is_a_column_where_the_lowest_is_best(tmp_path):
    geo = {"geo_share": 0.6, "geo_lift": 1.5, "n_requested": 8, "target": "retrieved"}
    make_run(tmp_path / "a", "simclr", attention={**geo, "transient_share": 0.02})
    make_run(tmp_path / "b", "byol", attention={**geo, "transient_share": 0.10})
    make_run(tmp_path / "c", "triplet", attention={**geo, "transient_share": 0.05})
    table = build_table(collect_runs([tmp_path]))
    assert [c.metric for c in table.columns] == ["R@1", "R@5", "R@10", "geo %", "geo lift", "transient %"]
    md = to_markdown(table)
    assert "transient % = share on vehicles and pedestrians (lower is better)" in md
    assert row_cells(md, "SimCLR")[10] == "**2.0**" and row_cells(md, "Triplet (partial mining)")[10] == "<u>5.0</u>"
    assert row_cells(md, "BYOL")[10] == "10.0"
    assert list(csv.DictReader(io.StringIO(to_csv(table))))[0]["world-demo-0 transient % mean"] == "2.0000"


def test_table_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", "simclr")
    (tmp_path / "table.md").write_text("not a folder")
    assert run_cli("table", "--runs", tmp_path / "runs", "--out", tmp_path / "table.md") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out names a folder" in err, err


# --- geo-relevance of collected runs -----------------------------------------------------------
@pytest.fixture
def fake_measure(monkeypatch):
    """`geo_relevance` and the model loader replaced by stubs; records each measurement's n."""
    calls = []

    def measure(model, cfg, root, *, split, n, target, device, progress):
        calls.append(n)
        return {"geo_share": 0.5, "geo_lift": 1.2, "transient_share": 0.01, "target": target}

    monkeypatch.setattr("vgssl_core.evaluation.attention.geo_relevance", measure)
    monkeypatch.setattr("vgssl_core.models.loading.load_descriptor_model", lambda ckpt: (None, {}, ""))
    return calls


def masked_world(root):
    dataset_folder(root)
    (root / "masks" / "test").mkdir(parents=True)
    (root / "classes.json").write_text('{"1": "building"}')
    return root


def test_attention_is_measured_again_for_another_n_or_checkpoint(tmp_path, fake_measure):
    run_dir = make_run(tmp_path / "run", "simclr", data=str(masked_world(tmp_path / "world")))
    (run_dir / "last.ckpt").write_bytes(b"weights 1")
    run = results.ensure_attention(results.read_run(run_dir), n=4, log=lambda *_: None)
    assert fake_measure == [4] and run.attention["n_requested"] == 4
    again = results.ensure_attention(results.read_run(run_dir), n=4, log=lambda *_: None)
    assert fake_measure == [4] and again.attention["geo_share"] == 0.5  # done before: reused
    (run_dir / "last.ckpt").write_bytes(b"weights 2")  # retrained in the same folder
    results.ensure_attention(results.read_run(run_dir), n=4, log=lambda *_: None)
    assert fake_measure == [4, 4]


def test_a_run_whose_dataset_is_not_found_shows_no_stale_attention(tmp_path, fake_measure, monkeypatch):
    """test.json records the dataset as given to `vgssl train`, often relative to where it ran."""
    geo = {"geo_share": 0.6, "geo_lift": 1.5, "n_requested": 8, "target": "retrieved"}
    run_dir = make_run(tmp_path / "run", "simclr", data="world", attention=geo)
    (run_dir / "last.ckpt").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)  # no ./world here
    said = []
    run = results.ensure_attention(results.read_run(run_dir), n=3, log=said.append)
    assert run.attention is None and fake_measure == []  # never the n=8 measurement for an n=3 request
    assert "its dataset world (from test.json) is not found (a relative path" in said[0]
    assert "geo %" not in to_markdown(build_table([run]))


# --- the grid ----------------------------------------------------------------------------------
@pytest.fixture
def fake_train(monkeypatch):
    """`train` replaced by a stub that writes what a finished run leaves; records its calls."""
    calls = []

    def train(cfg, data, run_dir, resume=None, progress=True):
        calls.append({"name": cfg["name"], "seed": cfg["trainer"]["seed"], "resume": resume})
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg))
        r1 = 40.0 + 5 * cfg["trainer"]["seed"] + (10 if cfg["method"] == "byol" else 0)
        (run_dir / "test.json").write_text(json.dumps({"recall": {"1": r1, "5": 60.0, "10": 70.0}, "data": str(data),
                                                       "split": "test"}))
        return {}

    monkeypatch.setattr("vgssl_core.training.train", train)
    return calls


def test_grid_trains_each_run_once_and_skips_finished_ones(tmp_path, fake_train):
    world = dataset_folder(tmp_path / "world")
    kwargs = dict(seeds=[0, 1], out=tmp_path / "grid", log=lambda *_: None)
    runs = run_grid(["demo-simclr", "demo-byol"], [world], **kwargs)
    assert len(fake_train) == 4 and len(runs) == 4
    assert (tmp_path / "grid" / "runs" / "world" / "demo-byol" / "seed1" / "test.json").is_file()
    again = run_grid(["demo-simclr", "demo-byol"], [world], **kwargs)
    assert len(fake_train) == 4  # nothing retrained
    table = build_table(again)
    assert [r.strategy for r in table.rows] == ["demo-simclr", "demo-byol"]
    assert table.rows[1].mean("world|R@1") == 52.5 and table.rows[1].seeds == 2


def test_grid_resumes_an_interrupted_run(tmp_path, fake_train):
    run_dir = tmp_path / "grid" / "runs" / "world" / "demo-simclr" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "last.ckpt").write_bytes(b"stands in for an interrupted run")
    (run_dir / "config.json").write_text(json.dumps(load_config(resolve_preset("demo-simclr"),
                                                                ["trainer.seed=0"])))
    run_grid(["demo-simclr"], [dataset_folder(tmp_path / "world")], out=tmp_path / "grid", log=lambda *_: None)
    assert fake_train == [{"name": "demo-simclr", "seed": 0, "resume": run_dir / "last.ckpt"}]


def test_grid_refuses_a_run_folder_of_another_config(tmp_path, fake_train):
    dataset_folder(tmp_path / "world")
    run_grid(["demo-simclr"], [tmp_path / "world"], out=tmp_path / "grid", log=lambda *_: None)
    run_grid(["demo-simclr"], [tmp_path / "world"], out=tmp_path / "grid", log=lambda *_: None,
             overrides=["trainer.accelerator=cpu", "data.workers=0"])  # where it trains: the same run
    assert len(fake_train) == 1
    with pytest.raises(VgsslError, match=r"another config \(differs in: optim.lr\)"):
        run_grid(["demo-simclr"], [tmp_path / "world"], out=tmp_path / "grid", overrides=["optim.lr=0.5"],
                 log=lambda *_: None)


def test_table_cli_runs_the_grid_with_overrides_anywhere(tmp_path, fake_train, capsys):
    dataset_folder(tmp_path / "w1"), dataset_folder(tmp_path / "w2")
    args = ["table", "--configs", "demo-vicreg", "optim.lr=0.01", "--data", tmp_path / "w1", tmp_path / "w2",
            "--seeds", "0,1", "--out", tmp_path / "grid", "--quiet"]
    assert run_cli(*args) == 0
    assert len(fake_train) == 4
    cfg = json.loads((tmp_path / "grid" / "runs" / "w2" / "demo-vicreg" / "seed1" / "config.json").read_text())
    assert cfg["optim"]["lr"] == 0.01 and cfg["trainer"]["seed"] == 1
    assert "| VICReg | demo-vicreg | information maximization | unrecorded | 2 | 42.5 ± 3.5 |" in capsys.readouterr().out
    assert run_cli(*args) == 0 and len(fake_train) == 4
    assert run_cli("table", "--configs", "no-such-preset", "--out", tmp_path / "x", "--data", tmp_path / "w1") == 2
    assert "strategy preset 'no-such-preset' not found" in capsys.readouterr().err
    assert run_cli("table", "--seeds", "0,a", "--out", tmp_path / "x", "--data", tmp_path / "w1") == 2


def test_grid_checks_every_dataset_before_the_first_training(tmp_path, fake_train, capsys):
    dataset_folder(tmp_path / "w1")
    args = ["table", "--configs", "demo-simclr", "--out", tmp_path / "grid", "--quiet"]
    assert run_cli(*args, "--data", tmp_path / "w1", tmp_path / "typo") == 2
    assert "typo: not a dataset folder" in capsys.readouterr().err and fake_train == []
    (tmp_path / "w2" / "images" / "train").mkdir(parents=True)
    assert run_cli(*args, "--data", tmp_path / "w1", tmp_path / "w2") == 2
    assert "w2: split 'val' is missing (no images/val/); this dataset has: train" in capsys.readouterr().err
    assert fake_train == []


def test_init_column_and_a_warning_when_rows_start_from_different_weights(tmp_path):
    make_run(tmp_path / "a", "simclr", init={"init": "imagenet", "source": "/c/r50.pth", "sha256": "ab" * 32})
    make_run(tmp_path / "b", "byol", init={"init": "random"})
    make_run(tmp_path / "c", "vicreg", init={"init": "file", "source": "path", "file": "/w.pth", "sha256": "0123456789" * 6 + "abcd"})
    make_run(tmp_path / "d", "barlow_twins")  # a run from before initialisations were recorded
    md = to_markdown(build_table(collect_runs([tmp_path])))
    assert [row_cells(md, m)[3] for m in ("SimCLR", "BYOL", "VICReg", "BT")] == [
        "imagenet", "random", "file 01234567", "unrecorded"]
    assert "start from different initial weights" in md.splitlines()[0]
    rows = list(csv.DictReader(io.StringIO(to_csv(build_table(collect_runs([tmp_path]))))))
    assert rows[0]["init"] == "imagenet"


def test_one_initialisation_for_all_rows_gives_no_warning(tmp_path):
    for i, method in enumerate(["simclr", "byol"]):
        make_run(tmp_path / method, method, init={"init": "random"})
    assert "different initial weights" not in to_markdown(build_table(collect_runs([tmp_path])))
