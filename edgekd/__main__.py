"""`python -m edgekd ...` runs the command line, as `torchrun -m edgekd run PIPELINE` needs."""

import sys

from edgekd.cli import main

if __name__ == "__main__":
    sys.exit(main())
