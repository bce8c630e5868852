"""`python -m node ...` is the `jobmesh` command."""

import sys

from node.cli import main

sys.exit(main())
