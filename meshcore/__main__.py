"""``python -m meshcore``: the meshcore command line."""

import sys

from meshcore.cli import main

sys.exit(main())
