"""Time the test suite as the README runs it (``pytest``), and record it.

Writes ``benchmarks/bench_test_suite_cpu.json``: wall and CPU time of the whole run, the
counts pytest reports, the slowest tests, the 1-minute load before and after, the machine,
commit and date. Run it on a quiet machine: other jobs on the cores stretch every figure::

    python scripts/bench_test_suite.py            # ~10 min on 2 cores
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _commit():
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def _counts(text):
    last = [line for line in text.splitlines() if re.search(r"\d+ passed", line)]
    counts = (
        {
            k: int(v)
            for v, k in re.findall(
                r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)", last[-1]
            )
        }
        if last
        else {}
    )
    return counts, (last[-1].strip("= ") if last else "")


def _slowest(text, n):
    rows = re.findall(r"^(\d+\.\d+)s (call|setup|teardown)\s+(\S+)", text, flags=re.M)
    return [{"seconds": float(s), "phase": p, "test": t} for s, p, t in rows[:n]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", type=Path, default=REPO / "benchmarks" / "bench_test_suite_cpu.json"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args(argv)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--durations=10",
            *args.pytest_args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts, summary = _counts(done.stdout)
    doc = {
        "title": "Test suite",
        "command": "python scripts/bench_test_suite.py",
        "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}",
        "commit": _commit(),
        "date": datetime.date.today().isoformat(),
        "results": {
            "wall_s": round(wall, 1),
            "wall_min": round(wall / 60, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "exit_code": done.returncode,
            "load_1min_before": round(load_before, 2),
            "load_1min_after": round(os.getloadavg()[0], 2),
            **counts,
        },
        "pytest_summary": summary,
        "slowest": _slowest(done.stdout, 10),
    }
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc["results"], indent=2))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
