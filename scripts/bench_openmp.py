"""CPU training step under OpenMP wait policies, on idle and on busy cores.

Each measurement is a fresh child process (the wait policy is read when torch loads OpenMP)
that trains the default network (the compact CNN at 2 mm on its 2x-pooled input, channels-last,
fused AdamW, as ``fit`` runs it) for ``--steps`` steps after 5 untimed ones and prints its
volumes per second. The policies, in turn in every round:

* ``spin``: torch's default (threads spin between parallel regions);
* ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once; the previous neuroml default);
* ``neuroml``: what the ``neuroml`` command sets now (:data:`neuroml._utils.threads.OPENMP_DEFAULTS`);
* ``spincount=N`` for each ``--spin-counts N``: other bounded spins (``GOMP_SPINCOUNT=N``).

"Busy" runs start ``--busy`` pure-Python busy loops beside the child (another user's job on a
shared machine). Usage::

    python scripts/bench_openmp.py --busy 0 1 2 --repeats 5 --json bench_openmp.json
    python scripts/bench_openmp.py --busy 0 1 --repeats 3 --spin-counts 300 3000 30000 --json spins.json
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchdata import report_result  # noqa: E402

from neuroml._utils.threads import OPENMP_DEFAULTS  # noqa: E402

POLICIES = {"spin": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "neuroml": dict(OPENMP_DEFAULTS)}

_CHILD = r"""
import sys, time, torch
from neuroml.models import build_model, resolve_input_pool
from neuroml.training.trainer import make_optimizer
threads, batch, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
torch.manual_seed(0)
shape = (73, 91, 78)  # the 2 mm grid
pool = resolve_input_pool("auto", "compact", shape)
model = build_model("compact", 3, spatial_shape=shape, input_pool=pool)
model.net = model.net[1:]  # fit pools the volumes once and trains the blocks behind the pooling
x = torch.randn(batch, 1, *(-(-s // pool) for s in shape)).contiguous(memory_format=torch.channels_last_3d)
y = torch.arange(batch) % 3
model = model.to(memory_format=torch.channels_last_3d)
opt = make_optimizer(model.parameters(), 1e-3, 1e-2)
loss_fn = torch.nn.CrossEntropyLoss()
def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()
for _ in range(5):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
print(batch * steps / (time.perf_counter() - t0))
"""


def _child_env(policy_env):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", *OPENMP_DEFAULTS)}
    env.update(policy_env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def measure(policy, policy_env, threads, batch, steps):
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(threads), str(batch), str(steps)],
        capture_output=True,
        text=True,
        env=_child_env(policy_env),
        timeout=1800,
    )
    if out.returncode:
        raise SystemExit(f"child ({policy}) failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.split()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--busy", type=int, nargs="+", default=[0, 1, 2], help="busy loops beside the child"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--spin-counts",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also time GOMP_SPINCOUNT=N for each N",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    policies = dict(POLICIES)
    policies.update(
        {
            f"spincount={n}": {"GOMP_SPINCOUNT": str(n), "KMP_BLOCKTIME": "0"}
            for n in args.spin_counts
        }
    )
    doc = {
        "command": "python scripts/bench_openmp.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "policies": policies,
        "load_avg_start": round(os.getloadavg()[0], 2),
        "vol_per_s": {},
    }
    for busy in args.busy:
        loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0 if busy else 0.0)
            rounds = {name: [] for name in policies}
            for _ in range(args.repeats):
                for name, policy_env in policies.items():
                    rounds[name].append(
                        round(
                            measure(name, policy_env, args.threads, args.batch_size, args.steps), 1
                        )
                    )
        finally:
            for proc in loops:
                proc.kill()
                proc.wait()
        med = {name: statistics.median(v) for name, v in rounds.items()}
        doc["vol_per_s"][f"busy={busy}"] = {
            "rounds": rounds,
            "median": med,
            "median_vs_passive": {name: round(v / med["passive"], 2) for name, v in med.items()},
        }
        print(
            f"busy={busy}: "
            + ", ".join(
                f"{n} {v:.0f} vol/s ({v / med['passive']:.2f}x passive)" for n, v in med.items()
            ),
            flush=True,
        )
    doc["load_avg_end"] = round(os.getloadavg()[0], 2)
    report_result(doc, args.json)


if __name__ == "__main__":
    main()
