"""How torch's OpenMP threads wait between parallel regions; set before torch is imported.

A CPU training step of the compact network is hundreds of small parallel regions. Between
them OpenMP threads either spin (torch's default) or sleep (``OMP_WAIT_POLICY=PASSIVE``).
On the 2-core development machine (README, Benchmarks, "OpenMP wait policy"):

* spinning is fastest on idle cores, but when other processes keep the cores busy, the
  spinning threads take their time slices and a step runs about 2x slower than sleeping;
* sleeping at once never collapses, but wakes the threads for every region: about 1.4x slower
  than spinning on idle cores;
* a short bounded spin (``GOMP_SPINCOUNT=1000``, GNU OpenMP: torch's Linux wheels) keeps
  most of the spinning speed on idle cores (1.4x faster than sleeping) and stays within
  about 15 % of sleeping on busy ones.

Other OpenMP runtimes (LLVM/Intel: macOS, some conda builds) have no spin count in
iterations; ``KMP_BLOCKTIME=0`` makes them sleep at once, as ``PASSIVE`` did.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["OPENMP_DEFAULTS", "OPENMP_VARIABLES", "configure_openmp"]

#: What :func:`configure_openmp` sets when the user has set none of these variables.
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "0"}
#: The variables that set the threads and their waits (recorded in a run's ``provenance.json``).
OPENMP_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def configure_openmp(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`OPENMP_DEFAULTS` in ``environ`` (default ``os.environ``) unless the user
    chose a wait policy (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` set).

    Takes effect only if called before torch (and its OpenMP runtime) is loaded: the ``neuroml``
    command and the benchmark scripts call it first. Returns the variables it set.

    >>> configure_openmp({})
    {'GOMP_SPINCOUNT': '1000', 'KMP_BLOCKTIME': '0'}
    >>> configure_openmp({"OMP_WAIT_POLICY": "PASSIVE"})
    {}
    """
    environ = os.environ if environ is None else environ
    if any(name in environ for name in OPENMP_VARIABLES[1:]):
        return {}
    environ.update(OPENMP_DEFAULTS)
    return dict(OPENMP_DEFAULTS)
