"""`python -m portcullis` runs the command line."""

import sys

from portcullis.cli import main

sys.exit(main())
