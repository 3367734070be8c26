"""``python -m normcore``: the same command line as the ``normcore`` script."""

import sys

from normcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
