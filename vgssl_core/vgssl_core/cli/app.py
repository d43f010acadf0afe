"""The ``vgssl`` command line: thin argument parsing over the library.

Every command prints a short human summary and can write machine-readable JSON (``--json``).
A user mistake (bad path, bad file, bad config) is one line on stderr and exit code 2, never
a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys

from vgssl_core import __version__
from vgssl_core.cli import calibrate, config, dataset, evaluate, maps, replay, results, synth, train
from vgssl_core.cli.common import Command, check_outputs
from vgssl_core.errors import EXIT_BAD_INPUT, VgsslError, user_message
from vgssl_core.io import disk_error_message

# The command groups, in the order ``vgssl --help`` lists them.
GROUPS = (synth, dataset, evaluate, train, config, maps, replay, calibrate, results)


def commands() -> dict[str, Command]:
    """Every subcommand by name."""
    return {c.name: c for group in GROUPS for c in group.COMMANDS}


class UsageError(Exception):
    """A bad command line, found by argparse: reported as one line, like every other user error."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (``vgssl CMD: error: ...``), exit 2, no usage dump."""

    def error(self, message: str):  # type: ignore[override]
        message = re.sub(r"^argument (-[-\w]+)(?:/-[-\w]+)*: ", r"\1 ", message)  # "--top-k must be >= 1, got 0"
        raise UsageError(f"{self.prog}: error: {message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vgssl", description="Self-supervised visual geo-localization")
    parser.add_argument("--version", action="version", version=f"vgssl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in commands().values():
        c.add_args(sub.add_parser(c.name, help=c.help, description=c.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for chatty in ("faiss", "pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may sit anywhere among the options (argparse keeps positionals together)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        check_outputs(args)  # before the work, not after it
        return commands()[args.command].run(args)
    except VgsslError as exc:
        print(f"vgssl {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a full, read-only or forbidden disk: one line, not a traceback
        message = disk_error_message(exc)
        if message is None:
            raise
        print(f"vgssl {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        print(f"vgssl {args.command}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
