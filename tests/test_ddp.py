"""`torchrun --nproc_per_node 2` trains one model with DistributedDataParallel (gloo, CPU)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_two_cpu_processes_agree_and_write_one_checkpoint(orl_faces: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FACELAB_LOG": "WARNING"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "facelab", "train", str(orl_faces), "--model", "lenet5", "--size", "32", "--epochs", "2",
           "--batch-size", "16", "--max-batches", "4", "--out", str(tmp_path), "--name", "ddp",
           "--no-tensorboard"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    ddp = json.loads((run / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    assert ddp["ranks_agree"] and ddp["checksums"][0] == ddp["checksums"][1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert not list(run.rglob("*.tmp"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["resolved"]["world_size"] == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + one row per epoch, written once (rank 0)
    assert (run / "bundle" / "bundle.json").is_file()
