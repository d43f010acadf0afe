"""`vgssl table`: the paper-style table from run folders, and the grid that skips finished runs."""

import csv
import io
import json

import pytest

from testkit import run_cli
from vgssl_core import results
from vgssl_core.config import load_config
from vgssl_core.errors import VgsslError
from vgssl_core.results import build_table, collect_runs, run_grid, to_csv, to_markdown


def make_run(folder, method, *, name=None, r1=50.0, r5=70.0, r10=80.0, seed=0, data="/data/world-demo-0",
             mining="partial", attention=None):
    """A finished run folder as `vgssl train` leaves it (only the files the table reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"name": name or method, "method": method, "trainer": {"seed": seed}, "mining": {"mode": mining}}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "test.json").write_text(json.dumps({"recall": {"1": r1, "5": r5, "10": r10, "20": 90.0},
                                                  "data": data, "split": "test"}))
    if attention is not None:
        (folder / "attention.json").write_text(json.dumps(attention))
    return folder


def row_cells(markdown, label):
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_best_is_bold_and_second_underlined_per_column(tmp_path):
    make_run(tmp_path / "a", "simclr", r1=60.0, r5=70.0)
    make_run(tmp_path / "b", "byol", r1=55.0, r5=90.0)
    make_run(tmp_path / "c", "vicreg", r1=40.0, r5=80.0)
    md = to_markdown(build_table(collect_runs([tmp_path])))
    simclr, byol, vicreg = (row_cells(md, m) for m in ("SimCLR", "BYOL", "VICReg"))
    # columns: method, strategy, category, seeds, R@1, R@5, R@10
    assert simclr[4] == "**60.0**" and byol[4] == "<u>55.0</u>" and vicreg[4] == "40.0"
    assert byol[5] == "**90.0**" and vicreg[5] == "<u>80.0</u>" and simclr[5] == "70.0"
    assert all(row[6] == "**80.0**" for row in (simclr, byol, vicreg))  # a three-way tie: all best, none second


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
    assert row_cells(md, "SimCLR")[4] == "**45.0 ± 7.1**"
    assert row_cells(md, "Triplet (full mining)")[4] == "<u>44.0</u>"
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
    assert row_cells(md, "SimCLR")[7:9] == ["**60.0**", "**1.50**"]
    assert row_cells(md, "BYOL")[7:9] == ["<u>40.0</u>", "<u>1.10</u>"]
    assert row_cells(md, "BYOL")[9] == "–"  # BYOL never ran on pitts30k


def test_collect_runs_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("table", "--runs", tmp_path / "empty", "--out", tmp_path / "t") == 2
    assert "no finished runs" in capsys.readouterr().err
    assert run_cli("table", "--runs", tmp_path / "nope", "--out", tmp_path / "t") == 2
    assert "no such run folder" in capsys.readouterr().err
    with pytest.raises(VgsslError, match="not a finished run"):
        results.read_run(tmp_path / "empty")


def test_table_cli_writes_markdown_csv_and_json(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", "simclr", r1=60.0)
    make_run(tmp_path / "runs" / "b", "mocov2", r1=50.0)
    out, report = tmp_path / "table", tmp_path / "table.json"
    assert run_cli("table", "--runs", tmp_path / "runs", "--out", out, "--json", report) == 0
    printed = capsys.readouterr().out
    assert "| SimCLR | simclr | contrastive | 1 | **60.0** |" in printed
    assert (out / "table.md").read_text() in printed and (out / "table.csv").is_file()
    payload = json.loads(report.read_text())
    assert [r["method"] for r in payload["rows"]] == ["SimCLR", "MoCo v2"]
    assert payload["rows"][0]["values"]["world-demo-0 R@1"]["mean"] == 60.0


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
    world = tmp_path / "world"
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
    (run_dir / "config.json").write_text(json.dumps(load_config(results.resolve_preset("demo-simclr"),
                                                                ["trainer.seed=0"])))
    run_grid(["demo-simclr"], [tmp_path / "world"], out=tmp_path / "grid", log=lambda *_: None)
    assert fake_train == [{"name": "demo-simclr", "seed": 0, "resume": run_dir / "last.ckpt"}]


def test_grid_refuses_a_run_folder_of_another_config(tmp_path, fake_train):
    run_grid(["demo-simclr"], [tmp_path / "world"], out=tmp_path / "grid", log=lambda *_: None)
    run_grid(["demo-simclr"], [tmp_path / "world"], out=tmp_path / "grid", log=lambda *_: None,
             overrides=["trainer.accelerator=cpu", "data.workers=0"])  # where it trains: the same run
    assert len(fake_train) == 1
    with pytest.raises(VgsslError, match=r"another config \(differs in: optim.lr\)"):
        run_grid(["demo-simclr"], [tmp_path / "world"], out=tmp_path / "grid", overrides=["optim.lr=0.5"],
                 log=lambda *_: None)


def test_table_cli_runs_the_grid_with_overrides_anywhere(tmp_path, fake_train, capsys):
    args = ["table", "--configs", "demo-vicreg", "optim.lr=0.01", "--data", tmp_path / "w1", tmp_path / "w2",
            "--seeds", "0,1", "--out", tmp_path / "grid", "--quiet"]
    assert run_cli(*args) == 0
    assert len(fake_train) == 4
    cfg = json.loads((tmp_path / "grid" / "runs" / "w2" / "demo-vicreg" / "seed1" / "config.json").read_text())
    assert cfg["optim"]["lr"] == 0.01 and cfg["trainer"]["seed"] == 1
    assert "| VICReg | demo-vicreg | information maximization | 2 | 42.5 ± 3.5 |" in capsys.readouterr().out
    assert run_cli(*args) == 0 and len(fake_train) == 4
    assert run_cli("table", "--configs", "no-such-preset", "--out", tmp_path / "x", "--data", tmp_path / "w1") == 2
    assert "strategy preset 'no-such-preset' not found" in capsys.readouterr().err
    assert run_cli("table", "--seeds", "0,a", "--out", tmp_path / "x", "--data", tmp_path / "w1") == 2
