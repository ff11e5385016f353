"""`python -m legokit.cli` runs the command line."""

import sys

from legokit.cli.commands import main

sys.exit(main())
