"""Small synthetic *preprocessed* derivatives for the throughput benchmarks (no preprocessing run).

Each volume is the MNI template on the target grid, z-scored in the brain mask, with a
class-dependent intensity change in one box and Gaussian noise, written exactly where
``neuroml preprocess`` writes its output, with a raw ``participants.tsv`` beside it. It lets
``scripts/bench_gpu.py`` and ``scripts/bench_throughput.py`` run on a bare machine with only
the repository copied. :func:`report_result` is how the benchmark scripts hand back their
results.
"""

import json
import sys
from pathlib import Path

CLASSES = ("control", "MDD", "SCZ")  # as in tests/_cohorts.py


def report_result(doc, path=None):
    """Print ``doc`` as one ``RESULT_JSON {...}`` line (for logs and the device tool) and,
    with ``path``, write it there as indented JSON (atomically); return ``doc``."""
    from neuroml._utils.fileio import write_json_atomic

    print("RESULT_JSON " + json.dumps(doc))
    if path:
        write_json_atomic(path, doc)
    return doc


def cpu_seconds():
    """CPU time of this process and its finished children (preprocessing runs in workers)."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), timing)``: wall and CPU seconds, 1-minute load average before and after."""
    import os
    import time

    load0, t0, c0 = os.getloadavg()[0], time.perf_counter(), cpu_seconds()
    out = fn(*args, **kwargs)
    timing = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(cpu_seconds() - c0, 1),
        "load_avg_1min_start": round(load0, 2),
        "load_avg_1min_end": round(os.getloadavg()[0], 2),
    }
    return out, timing


def make_derivatives(root, n_volumes=32, resolution=2.0, seed=0):
    """Write ``root/raw/participants.tsv`` and ``root/deriv`` (preprocessed-like volumes); return deriv.

    The cohort is the test suite's :func:`_cohorts.make_template_derivatives` (``tests/`` holds
    the one cohort builder; the benchmarks run from a copy of the whole repository)."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from _cohorts import make_template_derivatives

    return make_template_derivatives(root, n_volumes=n_volumes, resolution=resolution, seed=seed)
