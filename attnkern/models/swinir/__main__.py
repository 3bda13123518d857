"""``python -m attnkern.models.swinir``: the SwinIR command line (:mod:`attnkern.models.swinir.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
