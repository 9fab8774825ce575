"""neuroml: BIDS MRI to MONAI 3D CNNs for psychiatric classification, with attribution reports.

Stages (one subpackage each, data flows one way through files on disk):
``synth`` -> ``io`` -> ``preprocessing`` -> ``data`` -> ``models`` / ``training`` ->
``attribution`` -> ``reports``.
"""

import logging

__version__ = "0.1.0"

logging.getLogger("neuroml").addHandler(logging.NullHandler())

__all__ = ["__version__"]
