"""Rows 5, 6 and 9: outputs never land on an input or a foreign file; a full disk is one line
(exit 2) and leaves no temporary file; leftovers of a killed writer are cleaned up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from faultkit import cli_subprocess
from testkit import run_cli

from vgssl_core.io import write_json
from vgssl_core.errors import VgsslError


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_export_onto_the_training_checkpoint_is_refused(tiny_model, tmp_path, capsys):
    run = tmp_path / "R"
    run.mkdir()
    last, best = run / "last.ckpt", run / "best.ckpt"
    last.write_bytes(tiny_model().ckpt.read_bytes())
    best.write_bytes(tiny_model().ckpt.read_bytes())
    before = last.read_bytes()
    assert run_cli("export", "--ckpt", best, "--format", "torchscript", "--out", last) == 2
    assert "not a vgssl export" in capsys.readouterr().err
    assert last.read_bytes() == before and not (run / "last.ckpt.json").exists()
    assert run_cli("export", "--ckpt", best, "--format", "torchscript", "--out", best) == 2
    assert "is an input" in capsys.readouterr().err


def test_json_never_replaces_the_checkpoint_or_a_dataset_image(tiny_model, tiny_world, tmp_path, capsys):
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(tiny_model().ckpt.read_bytes())
    before = ckpt.read_bytes()
    assert run_cli("eval", "--data", tiny_world, "--split", "val", "--ckpt", ckpt, "--json", ckpt, "--quiet") == 2
    assert "is an input" in capsys.readouterr().err and ckpt.read_bytes() == before
    image = tmp_path / "photo.jpg"
    image.write_bytes(next((tiny_world / "images" / "val" / "queries").iterdir()).read_bytes())
    pixels = image.read_bytes()
    assert run_cli("eval", "--data", tiny_world, "--split", "val", "--json", image, "--quiet") == 2
    assert "not a vgssl json output" in capsys.readouterr().err and image.read_bytes() == pixels


def test_the_guard_lets_a_command_replace_its_own_outputs(tmp_path):
    from vgssl_core.io import check_output

    report = tmp_path / "r.json"
    write_json(report, {"recall": {}})
    assert check_output(report, kind="json") == report
    with pytest.raises(VgsslError, match="under|file, not a folder"):
        check_output(report / "x.json", kind="json")
    with pytest.raises(VgsslError, match="not a vgssl npz"):
        check_output(report, kind="npz")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_json_into_a_read_only_folder_is_refused_before_the_work(tmp_path):
    from vgssl_core.io import check_output

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(VgsslError, match="not writable"):
            check_output(folder / "r.json", kind="json")
    finally:
        folder.chmod(0o700)


def test_json_under_a_file_is_refused_before_the_work(tiny_world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli("eval", "--data", tiny_world, "--split", "val", "--json", blocker / "r.json", "--quiet") == 2
    err = capsys.readouterr()
    assert "is a file, not a folder" in err.err and "R@1" not in err.out  # refused before evaluating


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tiny_model, tiny_world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # eval --json and --save-descriptors (row 5: written through io.save_npz, never in place)
    np.savez(out / "d.npz", old=np.zeros(3))
    old = (out / "d.npz").read_bytes()
    done = cli_subprocess("eval", "--data", tiny_world, "--split", "val", "--ckpt", tiny_model().ckpt, "--quiet",
                          "--save-descriptors", out / "d.npz", "--json", out / "r.json", fsize=2000)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"vgssl eval: error: no space left on device (file size limit) "
                                                f"writing {out / 'd.npz'}"]
    assert (out / "d.npz").read_bytes() == old and _hidden(out) == []
    # export: a one-line error, no .partial left, not an abort in C++
    done = cli_subprocess("export", "--ckpt", tiny_model().ckpt, "--format", "torchscript", "--out", out / "m.pt",
                          fsize=4000)
    assert done.returncode == 2, done.stderr
    assert "no space left on device" in done.stderr and "Traceback" not in done.stderr
    assert _hidden(out) == [] and not (out / "m.pt").exists()
    # build-db: the earlier database stays, no partial folder is left
    shutil.copytree(tiny_model().db, out / "db")
    before = (out / "db" / "descriptors.npy").read_bytes()
    done = cli_subprocess("build-db", "--data", tiny_world, "--split", "val", "--ckpt", tiny_model().ckpt,
                          "--out", out / "db", "--quiet", fsize=3000)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("vgssl build-db: error: no space left on device")
    assert (out / "db" / "descriptors.npy").read_bytes() == before and _hidden(out) == []


def test_a_full_disk_during_training_is_one_line(tiny_world, tmp_path):
    from faultkit import FAST

    done = cli_subprocess("train", "--data", tiny_world, "--out", tmp_path / "run", "method=simclr", *FAST,
                          "--max-steps", "1", fsize=200_000)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("vgssl train: error: no space left on device")
    assert "Traceback" not in done.stderr
    assert not [p for p in (tmp_path / "run").rglob(".*") if ".tmp" in p.name]


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "r.json"
    code = ("import os, sys; from vgssl_core.io import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_bytes(b'x' * 100); print(tmp, flush=True); os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == -9
    assert len(_hidden(tmp_path)) == 1 and not target.exists()  # killed: the temporary file stays ...
    write_json(target, {"ok": True})
    assert _hidden(tmp_path) == [] and json.loads(target.read_text()) == {"ok": True}  # ... until the next write
