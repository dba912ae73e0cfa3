"""Multi-process data-parallel training under torchrun (torch.distributed + DistributedDataParallel).

`torchrun --nproc_per_node=N -m itkd_cli train|compress ...` starts N copies of the command; torchrun's
environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT) makes ``setup`` join them in one process
group: NCCL with one GPU a process (cuda:LOCAL_RANK), gloo on CPU. Without torchrun (WORLD_SIZE unset
or 1) every function here is the single-process identity, so a plain run is unchanged.

Each process reads its own share of every epoch (``data.loader.EpochSampler`` with rank/world), DDP
averages the gradients, rank 0 alone writes checkpoints, logs and evaluates. ``train.batch_size`` is
per process (OpenPCDet's BATCH_SIZE_PER_GPU): N processes train on N x batch_size frames a step.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from itkd_cli.core.errors import ItkdError
from itkd_cli.core.torchrun import env_int, env_world_size

# Rank 0 evaluates the val split between epochs while the others wait at a barrier: a collective
# must outlive a full nuScenes evaluation, far longer than the default timeout.
TIMEOUT = datetime.timedelta(hours=3)


def setup() -> None:
    """Join torchrun's process group once (idempotent; nothing to do for a single process).

    Raises:
        ItkdError: torchrun variables are incomplete, or the group cannot be formed.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        return
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ItkdError(f"WORLD_SIZE is {env_world_size()} but {', '.join(missing)} unset",
                        hint="start multi-process runs with torchrun --nproc_per_node=N -m itkd_cli ...")
    cuda = torch.cuda.is_available()
    if cuda:
        local = env_int("LOCAL_RANK", 0)
        if local >= torch.cuda.device_count():
            raise ItkdError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} GPUs",
                            hint="--nproc_per_node must not exceed the GPUs of a node")
        torch.cuda.set_device(local)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise ItkdError(f"torch.distributed: cannot form the process group ({exc})") from None
    atexit.register(teardown)


def teardown() -> None:
    """Leave the process group (registered at exit by ``setup``).

    A DDP wrapper left in cyclic garbage (frames of a failed run) keeps the gloo group alive until
    interpreter finalisation, where freeing it can abort the process (SIGABRT): collect it first.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of several (a process group with more than one member)."""
    return dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    return rank() == 0


def default_device() -> torch.device:
    """cuda:LOCAL_RANK under torchrun with GPUs, else CUDA when available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", env_int("LOCAL_RANK", 0) if active() else torch.cuda.current_device())


def wrap(module: nn.Module, some_unused: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when several processes train it, else itself.

    Modules with nothing to train (the student-alone KD stub, a frozen fusion) stay unwrapped.
    ``some_unused``: parameters may get no gradient in a step (KD modules: a term weighted 0), which DDP
    must then not wait for; it costs a graph traversal a step.
    """
    if not active() or not any(p.requires_grad for p in module.parameters()):
        return module
    device = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=some_unused)


def mean_over_ranks(values: Sequence[float | torch.Tensor], device: torch.device) -> list[float]:
    """Average scalars over all processes (themselves when alone): one collective for the lot."""
    scalars = [float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in values]
    if not active():
        return scalars
    t = torch.tensor(scalars, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when the flag is set on any process (a Ctrl-C seen by one stops all at the same step)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier() -> None:
    if active():
        dist.barrier()
