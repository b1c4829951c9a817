"""`python -m mpt_tui.cli`: the `mpt-tui` command."""

import sys

from mpt_tui.cli import main

sys.exit(main())
