"""``vgssl config show`` and ``vgssl config list``: what a preset resolves to, and which ship."""

from __future__ import annotations

import argparse

import yaml

from vgssl_core.cli.common import add_common, finish, registrar

COMMANDS: list = []
command = registrar(COMMANDS)


def _config_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="print the fully resolved config of a preset (YAML)",
                          description="print the fully resolved config of a preset (YAML): defaults <- preset <- overrides")
    show.add_argument("preset", help="a shipped preset's name (vgssl config list) or a YAML file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4")
    add_common(show)
    listing = sub.add_parser("list", help="list the shipped presets with their one-line header",
                             description="list the shipped presets with their one-line header")
    add_common(listing)


@command("config", "show a preset's resolved config, or list the shipped presets", _config_args)
def run_config(args: argparse.Namespace) -> int:
    from vgssl_core.training.config import load_config, preset_headers

    if args.action == "list":
        headers = preset_headers()
        width = max(len(name) for name in headers)
        for name, header in headers.items():
            print(f"{name:<{width}}  {header}")
        return finish(args, headers)
    cfg = load_config(args.preset, list(args.overrides))
    print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return finish(args, cfg)
