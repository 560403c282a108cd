"""Where and how the loop runs: device, mixed precision, memory format, DDP rank.

The batch path is ``InputSpec``'s, in the order the GPU wants it: the uint8 batch is
copied to the device (pinned and non-blocking on CUDA: a quarter of the float bytes),
scaled to [0, 1] (:meth:`InputSpec.to_unit`), augmented there (:func:`augment_batch`),
normalised (:meth:`InputSpec.normalise`, the only normalisation in facelab) and laid out
channels-last for cuDNN's and oneDNN's NHWC kernels.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from facelab._io import write_json
from facelab.augment import AugmentConfig, augment_batch
from facelab.bundle.spec import InputSpec
from facelab.errors import ConfigError
from facelab.train.config import TrainConfig

__all__ = ["Runtime", "make_runtime", "init_distributed", "weights_checksum"]

log = logging.getLogger("facelab.train")


@dataclass
class Runtime:
    """Where and how the loop runs (device, input spec, precision, distributed rank)."""

    device: torch.device
    spec: InputSpec
    amp_dtype: torch.dtype | None = None
    """bfloat16 or float16 autocast; None = full precision."""
    channels_last: bool = False
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device. On CUDA it is pinned first so the copy is
        asynchronous (``non_blocking`` from pageable memory would copy synchronously)."""
        if not self.cuda:
            return t.to(self.device)
        if t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def gather(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``x[idx]`` of a host tensor; on CUDA gathered straight into page-locked memory
        (one copy, then :meth:`to_device` sends it without another)."""
        if not self.cuda or x.device.type != "cpu":
            return x[idx]
        out = torch.empty((len(idx), *x.shape[1:]), dtype=x.dtype, pin_memory=True)
        return torch.index_select(x, 0, idx, out=out)

    def to_input(self, xb: torch.Tensor, augment: AugmentConfig | None = None,
                 g: torch.Generator | None = None) -> torch.Tensor:
        """uint8 NHWC batch -> the model's input on the device: to_unit -> augment (if
        asked, on the device) -> normalise -> channels_last."""
        x = self.spec.to_unit(self.to_device(xb))
        if augment is not None and g is not None:
            x = augment_batch(x, augment, g)
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A float NCHW batch in [0, 1] (already augmented) -> the model's input on the device."""
        x = self.spec.normalise(self.to_device(x))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> Any:
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> Any:
        """float16 needs loss scaling (its exponent is short); bfloat16 and fp32 do not."""
        return torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None


def make_runtime(config: TrainConfig, spec: InputSpec) -> Runtime:
    """The runtime of this process: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from torchrun,
    the device from the config (``auto``: a GPU when present), AMP on for GPUs."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    name = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: PyTorch sees no CUDA GPU here (torch {torch.__version__}, "
                          f"built for CUDA {torch.version.cuda}); install a CUDA build of torch, or use --device cpu")
    if name == "cuda" and world > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: {exc}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 parts (validation without AMP) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    elif config.threads:
        torch.set_num_threads(config.threads)
    elif world > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // world))
    amp = config.amp if config.amp is not None else device.type == "cuda"
    # channels_last: cuDNN's tensor-core kernels and oneDNN's CPU convolutions both run
    # faster on NHWC (bench: efficientnet_lite0 at 96 px trains ~1.5x faster on 2 cores).
    return Runtime(device, spec, amp_dtype(device) if amp else None, True, rank, world)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware has it (CPUs, Ampere and later GPUs): the range of
    float32, no loss scaling; float16 (with a GradScaler) on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def init_distributed(rt: Runtime) -> None:
    import torch.distributed as dist

    if rt.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if rt.cuda else "gloo")


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    if rt.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [rt.device.index] if rt.cuda else None
    # frozen-backbone epochs leave parameters without gradients
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def all_mean(value: float, rt: Runtime) -> float:
    if rt.world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=rt.device if rt.cuda else None)
    dist.all_reduce(t)
    return float(t.item()) / rt.world


def broadcast(obj: Any, rt: Runtime) -> Any:
    if rt.world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(rt: Runtime) -> None:
    if rt.world > 1:
        import torch.distributed as dist

        dist.barrier()


def weights_checksum(model: nn.Module) -> float:
    """One number summarising the weights (equal weights -> equal sums, bit for bit)."""
    return float(sum(t.double().sum() for t in model.state_dict().values() if t.is_floating_point()))


def check_ranks_agree(model: nn.Module, rt: Runtime, run_dir: Path) -> None:
    """DDP keeps every rank's weights identical; verify it and record it in ``ddp.json``."""
    if rt.world == 1:
        return
    import torch.distributed as dist

    sums: list[Any] = [None] * rt.world
    dist.all_gather_object(sums, weights_checksum(model))
    if rt.main:
        agree = len(set(sums)) == 1
        write_json(run_dir / "ddp.json", {"world_size": rt.world, "backend": dist.get_backend(),
                                          "checksums": sums, "ranks_agree": agree})
        if not agree:
            log.error("DDP ranks ended with different weights: %s", sums)
