"""`python -m pytest_invarlock`: see `cli`."""

import sys

from pytest_invarlock.cli import main

sys.exit(main())
