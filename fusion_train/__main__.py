"""``python -m fusion_train`` runs the ``fusion-train`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
