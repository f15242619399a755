"""``python -m nnkit``: the same command line as the ``nnkit`` script."""
import sys

from .tools.cli import main

sys.exit(main())
