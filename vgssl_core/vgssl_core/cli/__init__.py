"""The ``vgssl`` command line: one module per command group, listed explicitly in ``cli.app``."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vgssl`` console script."""
    from vgssl_core.cli.app import main as run

    return run(argv)
