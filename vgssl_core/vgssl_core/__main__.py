"""``python -m vgssl_core`` is the ``vgssl`` command."""

import sys

from vgssl_core.cli import main

sys.exit(main())
