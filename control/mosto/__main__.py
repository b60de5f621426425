"""`python -m mosto` is the `mosto` command."""

import sys

from mosto.cli import main

sys.exit(main())
