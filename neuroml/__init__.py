"""neuroml: BIDS MRI to MONAI 3D CNNs for psychiatric classification, with attribution reports.

Stages (one subpackage each, data flows one way through files on disk):
``synth`` -> ``io`` -> ``preprocessing`` -> ``data`` -> ``models`` / ``training`` ->
``attribution`` -> ``reports``.
"""

import logging

from neuroml._version import __version__

logging.getLogger("neuroml").addHandler(logging.NullHandler())

__all__ = ["__version__"]
