"""`python -m kvferry` is the `kvferry` command."""

import sys

from kvferry.cli import main

sys.exit(main())
