"""`python -m mm2d_integrations.cli`: the `mm2d` command."""

import sys

from mm2d_integrations.cli import main

sys.exit(main())
