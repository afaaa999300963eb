"""`python -m gossipmgr.cli`: the gossipmgr command line."""

import sys

from gossipmgr.cli.main import main

sys.exit(main())
