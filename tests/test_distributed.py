"""DistributedDataParallel through torchrun, on CPU with gloo: two processes, one run folder."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroml.training import distributed as dist
from neuroml.training.metrics import balanced_accuracy

TESTS = Path(__file__).resolve().parent

# Launched by torchrun in each of two processes. It records every file a rank moves into
# place (all neuroml outputs go through os.replace in atomic_path), then checks DDP's fit.
WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    out, deriv, run_dir = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    writes, real_replace = [], os.replace
    def recording_replace(src, dst, *a, **k):
        writes.append(os.path.relpath(str(dst), run_dir))
        return real_replace(src, dst, *a, **k)
    os.replace = recording_replace
    from neuroml.training import fit, TrainSettings
    from neuroml.workflows import train_run
    from neuroml.training import distributed as dist
    summary = train_run(deriv, run_dir, epochs=4, folds=3, batch_size=2, device="cpu", show_progress=False,
                        n_bootstrap=50)
    group_left = not torch.distributed.is_initialized()
    os.replace = real_replace

    # fit() under DDP: disjoint shares of each epoch, identical weights on every rank
    class Recording(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.labels, self.seen = x, y, []
        def __len__(self):
            return len(self.x)
        def __getitem__(self, i):
            self.seen.append(int(i))
            return self.x[i], torch.as_tensor(self.labels[i])
    # a fresh store: re-joining torchrun's own store after a teardown can mix up stale keys
    torch.distributed.init_process_group("gloo", init_method="file://" + os.path.join(out, "store"),
                                         rank=rank, world_size=2)
    g = torch.Generator().manual_seed(0)
    y = np.arange(12) % 3
    x = torch.randn(12, 1, 19, 23, 20, generator=g)
    for i, c in enumerate(y):
        x[i, :, 4 * c:4 * c + 4] += 2.0
    from neuroml.models import build_model
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    net = build_model("compact", 3, spatial_shape=(19, 23, 20))
    train = Recording(x, y)
    res = fit(net, train, None, TrainSettings(epochs=2, batch_size=2, device="cpu", show_progress=False,
                                              schedule="constant"), stream=(0,))
    weights = float(sum(p.detach().double().sum() for p in res.model.parameters()))
    torch.distributed.destroy_process_group()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "writes": writes, "summary": summary, "group_left": group_left,
                   "seen": train.seen, "weights": weights,
                   "history": [r["train_loss"] for r in res.history]}, fh)
""")


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    sys.path.insert(0, str(TESTS))
    from test_training import CLASSES, make_cohort

    deriv = make_cohort(tmp_path)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    run_dir = tmp_path / "run"
    import neuroml

    src = str(
        Path(neuroml.__file__).resolve().parents[1]
    )  # the neuroml under test, installed or not
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=127.0.0.1:0",
        str(worker),
        str(tmp_path),
        str(deriv),
        str(run_dir),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # only rank 0 writes, and each run-level file once
    assert ranks[1]["writes"] == []
    writes = ranks[0]["writes"]
    for name in (
        "config.json",
        "splits.json",
        "metrics.json",
        "predictions.tsv",
        "provenance.json",
        "training_curve.png",
        "baseline_predictions.tsv",
    ):
        assert writes.count(name) == 1, (name, writes)
        assert (run_dir / name).is_file()
    for k in range(3):
        assert (
            writes.count(f"fold-{k}/model.pt") == 1 and writes.count(f"fold-{k}/history.tsv") == 1
        )
        assert not (run_dir / f"fold-{k}" / "last.pt").exists()
    assert not list(run_dir.rglob(".*.tmp*"))  # no stray temporary files
    assert all(r["group_left"] for r in ranks)  # train_run tears down the group it created

    # every rank returns rank 0's summary, which matches the files
    assert ranks[0]["summary"] == ranks[1]["summary"]
    summary = ranks[0]["summary"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["runtime"]["world_size"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    pred = pd.read_csv(run_dir / "predictions.tsv", sep="\t")
    assert len(pred) == 12 and pred["participant_id"].is_unique
    y = pred["true_label"].map(CLASSES.index).to_numpy()
    yhat = pred["predicted_label"].map(CLASSES.index).to_numpy()
    assert metrics["cnn"]["balanced_accuracy"] == pytest.approx(balanced_accuracy(y, yhat, 3))
    assert summary["balanced_accuracy"] == metrics["cnn"]["balanced_accuracy"]
    assert (
        summary["balanced_accuracy"] > 0.6
    )  # the easy blob task is learnt under DDP too (chance 1/3)
    splits = json.loads((run_dir / "splits.json").read_text())["folds"]
    for f in splits:
        assert set(pred.loc[pred["fold"] == f["fold"], "participant_id"]) == set(f["test"])

    # fit: each rank saw its own half of every epoch; weights and history agree across ranks
    seen = [np.array(r["seen"]).reshape(2, 6) for r in ranks]  # 2 epochs x 6 items per rank
    for epoch in range(2):
        assert not set(seen[0][epoch]) & set(seen[1][epoch])
        assert sorted(set(seen[0][epoch]) | set(seen[1][epoch])) == list(range(12))
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], rel=1e-9)
    assert ranks[0]["history"] == ranks[1]["history"]


def test_single_process_helpers_without_torchrun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.launched_by_torchrun()
    dev, created = dist.init_distributed("cpu")
    assert str(dev) == "cpu" and created is False
    assert (dist.rank(), dist.world_size(), dist.is_main_process(), dist.is_distributed()) == (
        0,
        1,
        True,
        False,
    )
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.all_reduce_mean(2.5, 3) == 2.5
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert dist.launched_by_torchrun()
