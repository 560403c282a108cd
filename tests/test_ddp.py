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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_cache(shared_cache: Path, folder: Path) -> Path:
    """A machine's own cache folder: the prepared crops and embeddings hard-linked from the
    test cache (no detection again), no crop stores."""
    import shutil

    shutil.copytree(shared_cache, folder, copy_function=os.link, ignore=shutil.ignore_patterns("stores"))
    return folder


def test_two_nodes_rendezvous_stream_their_own_shards_and_agree(orl_faces: Path, tmp_path: Path) -> None:
    """`torchrun --nnodes 2 --node_rank R --rdzv-endpoint HOST:PORT` started twice (one process
    per "machine", gloo on CPU), each machine with its own cache folder and run folder, the
    crops streamed from a crop store: each rank builds and reads only its own training
    shards, both build the valid shards they need, rank 0 alone writes the run."""
    from facelab.data import load_source
    from facelab.prepare import default_cache_dir, prepare_table

    prepare_table(load_source(orl_faces), progress=False)  # crops in the test cache (cached after once)
    port = _free_port()
    procs = []
    for node in (0, 1):
        cache = _node_cache(default_cache_dir(), tmp_path / f"node{node}" / "cache")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FACELAB_LOG": "WARNING", "FACELAB_CACHE": str(cache)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node), "--rdzv-endpoint", f"127.0.0.1:{port}",
               "-m", "facelab", "train", str(orl_faces), "--model", "lenet5", "--size", "32", "--epochs", "2",
               "--batch-size", "16", "--max-batches", "4", "--loader", "stream", "--shard-rows", "64",
               "--out", str(tmp_path / f"node{node}" / "runs"), "--name", "multi", "--no-tensorboard"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    run = tmp_path / "node0" / "runs" / "multi"
    ddp = json.loads((run / "ddp.json").read_text())
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    assert ddp["ranks_agree"] and ddp["checksums"][0] == ddp["checksums"][1]
    assert json.loads((run / "config.json").read_text())["resolved"]["loader"].startswith("stream")
    assert (run / "bundle" / "bundle.json").is_file()
    assert not (tmp_path / "node1" / "runs").exists()  # only rank 0 writes a run folder
    # 318 training crops in 5 shards of 64: rank 0 owns shards 0, 2, 4 and rank 1 shards 1, 3
    shards = {}
    for node in (0, 1):
        stores = sorted((tmp_path / f"node{node}" / "cache" / "stores").iterdir(),
                        key=lambda d: -len(list(d.glob("shard-*.npy"))))
        shards[node] = [sorted(p.name for p in d.glob("shard-*.npy")) for d in stores]
    assert ["shard-00000.npy", "shard-00002.npy", "shard-00004.npy"] in shards[0]
    assert ["shard-00001.npy", "shard-00003.npy"] in shards[1]
    assert ["shard-00000.npy", "shard-00001.npy"] in shards[0] and ["shard-00000.npy", "shard-00001.npy"] in shards[1]
