"""The crop store (facelab.store) and training that streams from it, on real photos."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facelab import store as S
from facelab.bundle.spec import InputSpec
from facelab.data import load_source
from facelab.prepare import prepare_table
from facelab.prepare import default_cache_dir
from facelab.train import Runtime, epoch_batches, load_crops


def _crops(celeba_mini: Path, n: int) -> list[Path]:
    return prepare_table(load_source(celeba_mini).subset(range(n)), None, progress=False).paths


def test_store_reads_exactly_the_in_memory_crops(celeba_mini: Path, tmp_path: Path) -> None:
    paths = _crops(celeba_mini, 40)
    spec = S.spec_for(paths, 48, tmp_path, shard_rows=16)
    assert spec.shards == 3 and len(spec.shard_range(2)) == len(paths) - 32
    assert S.build_shards(spec, paths) == [0, 1, 2]
    store = S.CropStore(spec)
    expected = load_crops(paths, 48, progress=False)
    rows = np.array([39, 0, 17, 17, 31, 5])  # across shards, out of order, one repeated
    assert np.array_equal(store.read(rows), expected[rows])
    assert torch.equal(store[torch.tensor([3, 20])], torch.from_numpy(expected[[3, 20]]))
    assert torch.equal(store[32:40], torch.from_numpy(expected[32:40]))
    out = np.zeros((len(rows), 48, 48, 3), np.uint8)
    assert store.read(rows, out) is out and np.array_equal(out, expected[rows])
    assert torch.equal(store.tensor(rows), torch.from_numpy(expected[rows])) and not store.tensor(rows).is_pinned()
    with pytest.raises(IndexError):
        store.read([40])
    # a killed build resumes: only the missing shard is written again, with the same bytes
    before = spec.shard_path(1).read_bytes()
    spec.shard_path(1).unlink()
    assert S.build_shards(spec, paths) == [1]
    assert spec.shard_path(1).read_bytes() == before
    # the same crops at another size, or in another order, are another store
    assert S.spec_for(paths, 64, tmp_path, 16).root != spec.root
    assert S.spec_for(paths[::-1], 48, tmp_path, 16).root != spec.root


def test_store_index_and_damaged_shards(celeba_mini: Path, tmp_path: Path) -> None:
    table = prepare_table(load_source(celeba_mini).subset(range(12)), None, progress=False)
    spec = S.spec_for(table.paths, 32, tmp_path, shard_rows=5)
    S.build_shards(spec, table.paths)
    S.write_index(spec, table.paths, [table.source_of(i) for i in range(len(table))], table.labels,
                  table.identities, table.splits)
    meta = json.loads((spec.root / "store.json").read_text())
    assert meta["rows"] == 12 and meta["shards"] == 3 and meta["size"] == 32
    assert S.read_spec(spec.root) == spec
    with open(spec.root / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["crop"] for r in rows] == [str(p) for p in table.paths]
    assert rows[3]["source"] == str(table.source_of(3)) and rows[3]["identity"] == table.identities[3]
    assert rows[3]["label"].split() == [str(int(v)) for v in table.labels[3]]
    # a shard of the wrong shape is refused with the folder to delete
    np.save(spec.shard_path(2), np.zeros((3, 32, 32, 3), np.uint8))  # holds 2 rows
    with pytest.raises(ValueError, match="delete the folder"):
        S.CropStore(spec).read([11])


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_reads_only_its_own_shards(world: int, tmp_path: Path) -> None:
    spec = S.StoreSpec(tmp_path, rows=1000, size=32, shard_rows=64)  # 16 shards, the last one short
    parts = [S.rank_rows(spec, r, world) for r in range(world)]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))  # disjoint, complete
    take = min(map(len, parts))
    steps = set()
    for r in range(world):
        rt = Runtime(torch.device("cpu"), InputSpec(32), rank=r, world=world)
        shards = set(S.rank_shards(spec, r, world))
        for epoch in range(2):
            batches = epoch_batches(1000, 32, epoch, rt, None, None, parts[r], take)
            rows = torch.cat(batches).numpy()
            assert {int(i) // 64 for i in rows} <= shards
            assert len(set(rows.tolist())) == len(rows)
            steps.add(len(batches))
    assert len(steps) == 1  # every rank makes as many steps (DDP would hang otherwise)
    # fewer shards than ranks: every rank reads every world-th row
    small = S.StoreSpec(tmp_path, rows=10, size=32, shard_rows=64)
    assert S.rank_rows(small, 1, 3).tolist() == [1, 4, 7]


TINY = dict(model="lenet5", image_size=32, batch_size=32, epochs=2, progress=False, tensorboard=False)


def _train(orl: Path, out: Path, name: str, **options: object) -> tuple[Path, dict]:
    from facelab.train import train

    run = train(orl, out=str(out), name=name, **{**TINY, **options})
    return run, torch.load(run / "bundle" / "weights.pt")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_training_equals_in_memory_training(orl_faces: Path, tmp_path: Path) -> None:
    """Without augmentation the streamed path feeds the loop the very same batches: the
    weights are bit-identical to the in-memory path's, with or without worker processes.
    With augmentation, batch b draws from its own seed, so the worker count cannot change it."""
    mem, w_mem = _train(orl_faces, tmp_path, "mem", augment="none", loader="memory")
    st0, w_st0 = _train(orl_faces, tmp_path, "st0", augment="none", loader="stream", loader_workers=0, shard_rows=64)
    st2, w_st2 = _train(orl_faces, tmp_path, "st2", augment="none", loader="stream", loader_workers=2, shard_rows=64)
    assert _same(w_mem, w_st0) and _same(w_mem, w_st2)
    assert (mem / "split.json").read_text() == (st2 / "split.json").read_text()
    loaders = [json.loads((r / "config.json").read_text())["resolved"]["loader"] for r in (mem, st0, st2)]
    assert loaders == ["memory", "stream (0 workers)", "stream (2 workers)"]
    _, a0 = _train(orl_faces, tmp_path, "aug0", loader="stream", loader_workers=0, shard_rows=64)
    _, a2 = _train(orl_faces, tmp_path, "aug2", loader="stream", loader_workers=2, shard_rows=64)
    assert _same(a0, a2) and not _same(a0, w_st0)


def test_auto_loader_streams_only_over_the_memory_budget(orl_faces: Path, tmp_path: Path) -> None:
    small, _ = _train(orl_faces, tmp_path, "auto", epochs=1, max_batches=2)
    big, _ = _train(orl_faces, tmp_path, "over", epochs=1, max_batches=2, memory_budget_mb=0.5)
    assert json.loads((small / "config.json").read_text())["resolved"]["loader"] == "memory"
    assert json.loads((big / "config.json").read_text())["resolved"]["loader"] == "stream (2 workers)"
    split = json.loads((big / "split.json").read_text())
    for part in ("train", "valid"):  # both stores built in the cache, described by store.json
        spec = S.spec_for(split[part], 32, default_cache_dir())
        assert S.read_spec(spec.root) == spec and spec.rows == len(split[part])
    with pytest.raises(ValueError, match="loader must be one of"):
        _train(orl_faces, tmp_path, "bad", loader="disk")


def test_bf16_autocast_trains_on_a_cpu_from_the_store(orl_faces: Path, tmp_path: Path) -> None:
    """The GPU path's mixed precision (bf16 autocast) and channels_last run on a CPU too,
    streamed crops included: finite losses, a bundle that predicts probabilities."""
    from facelab.backends import load

    run, _ = _train(orl_faces, tmp_path, "bf16", epochs=1, max_batches=3, amp=True, loader="stream", shard_rows=64)
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["amp"] == "torch.bfloat16" and resolved["device"] == "cpu"
    row = (run / "metrics.csv").read_text().splitlines()[1].split(",")
    assert all(np.isfinite(float(v)) for v in row[2:4])  # train_loss, valid_loss
    probs = load(run).predict_crops([np.full((32, 32, 3), 128, np.uint8)])
    assert probs.shape == (1, 40) and np.isclose(probs.sum(), 1, atol=1e-3)


def test_lr_find_reads_a_streamed_store(orl_faces: Path) -> None:
    from facelab.train import lr_find

    result = lr_find(orl_faces, model="lenet5", image_size=32, batch_size=16, steps=8, loader="stream",
                     shard_rows=64, progress=False, tensorboard=False)
    assert len(result["lrs"]) == len(result["losses"]) >= 6 and np.isfinite(result["losses"]).all()
    assert result["lrs"][0] <= result["suggested"] <= result["lrs"][-1]
