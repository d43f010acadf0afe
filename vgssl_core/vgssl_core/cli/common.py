"""What every ``vgssl`` command shares: options, the JSON ending, list parsing, the registry type.

Each command module keeps its own ``COMMANDS`` list, filled by :func:`registrar`; ``cli.main``
imports the modules by name, so a command that fails to import fails loudly, and no module
registers anything as a side effect of being imported somewhere else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from vgssl_core.errors import VgsslError

AddArgs = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, argument builder and ``run`` function."""

    name: str
    help: str
    add_args: AddArgs
    run: Run


def registrar(commands: list[Command]) -> Callable[[str, str, AddArgs], Callable[[Run], Run]]:
    """A decorator factory that appends ``Command`` entries to ``commands`` (the module's list)."""

    def command(name: str, help_text: str, add_args: AddArgs) -> Callable[[Run], Run]:
        def register(run: Run) -> Run:
            commands.append(Command(name, help_text, add_args, run))
            return run

        return register

    return command


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# Options that name what a command reads: no output may land on one of them.
INPUT_OPTIONS = ("ckpt", "data", "db", "images", "resume", "config", "world", "bag")


def command_inputs(args: argparse.Namespace) -> list[str]:
    """The paths a command reads (``--bag`` is an output of ``vgssl synth``)."""
    names = [n for n in INPUT_OPTIONS if not (n == "bag" and args.command == "synth")]
    found: list[str] = []
    for name in names:
        value = getattr(args, name, None)
        found.extend(str(v) for v in (value if isinstance(value, list) else [value]) if v)
    return found


def check_outputs(args: argparse.Namespace) -> None:
    """The output guard (``io.check_output``) on the file outputs every command shares, before any work:
    ``--json``, ``--save-descriptors NPZ`` and ``--plots PREFIX``."""
    from vgssl_core.io import check_output

    inputs = command_inputs(args)
    if getattr(args, "json", None):
        check_output(args.json, inputs=inputs, kind="json")
    if isinstance(getattr(args, "save_descriptors", None), str):
        check_output(args.save_descriptors, inputs=inputs, kind="npz")
    if getattr(args, "plots", None):
        for name in ("recall_vs_n.png", "recall_vs_threshold.png"):
            check_output(f"{args.plots}{name}", inputs=inputs, kind="png")


# argparse types: a bad value is argparse's one-line usage error (exit 2) before any work
def _whole(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got '{text}'") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    return _whole(text, 1)


def nonnegative_int(text: str) -> int:
    """A whole number >= 0."""
    return _whole(text, 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (not nan, not inf)."""
    return _finite(text, strict=True)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _finite(text, strict=False)


def _finite(text: str, strict: bool) -> float:
    import math

    bound = "> 0" if strict else ">= 0"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number {bound}, got '{text}'") from None
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got '{text}'")
    return value


def add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto: CUDA when available)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data-loader worker processes")


def finish(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    """Write ``payload`` to ``--json`` when asked (atomically); exit status 0."""
    if getattr(args, "json", None):
        from vgssl_core.io import write_json

        write_json(args.json, payload)
    return 0


def format_recall(recall: dict) -> str:
    return "  ".join(f"R@{n} {r:5.1f}" for n, r in recall.items())


def parse_ns(text: str, option: str = "--recall-n") -> tuple[int, ...]:
    """Comma-separated N values of Recall@N, sorted and unique, each >= 1."""
    try:
        ns = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise VgsslError(f"{option} must be comma-separated integers, got '{text}'") from None
    if not ns or ns[0] < 1:
        raise VgsslError(f"{option} values must be >= 1")
    return ns


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """Comma-separated positive numbers (distance thresholds and the like)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VgsslError(f"{option} must be comma-separated numbers, got '{text}'") from None
    if not values or not all(v > 0 and v != float("inf") for v in values):
        raise VgsslError(f"{option} values must be finite and > 0, got '{text}'")
    return values
