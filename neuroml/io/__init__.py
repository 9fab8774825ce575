"""Input and output: the image checker, BIDS reading and naming, templates and atlases."""

from neuroml.io.bids import Scan, derivative_name, find_scans, parse_entities, read_participants
from neuroml.io.image import check_array, check_img, load_data

__all__ = [
    "check_img",
    "check_array",
    "load_data",
    "Scan",
    "find_scans",
    "parse_entities",
    "read_participants",
    "derivative_name",
]
