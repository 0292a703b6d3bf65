"""``python -m elastigraph ...``: the same CLI as the ``elastigraph`` command."""

import sys

from .cli import main

sys.exit(main())
