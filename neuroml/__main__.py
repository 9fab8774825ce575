"""``python -m neuroml`` runs the command line."""

import sys

from neuroml.cli import main

sys.exit(main())
