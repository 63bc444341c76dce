"""Distributed helpers: one process per device, launched by ``torchrun`` or ``torch.distributed.launch``.

A plain ``python script.py`` runs a single process without initialising a group.
The backend is ``nccl`` when CUDA is available, ``gloo`` otherwise.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def setup() -> torch.device:
    """Join the process group if launched under a distributed launcher; return this process's device.

    With CUDA, local rank i takes GPU i; more processes on a node than GPUs is an error (two ranks on
    one GPU make NCCL fail with an unclear message).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        gpus = torch.cuda.device_count()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
        if local_rank >= gpus or local_world > gpus:
            raise UserError(f"{max(local_world, local_rank + 1)} processes on this node but {gpus} GPU(s) visible: "
                            f"launch with `nproc_per_node` {gpus} (or fewer), or make more GPUs visible "
                            f"(CUDA_VISIBLE_DEVICES)")
        torch.cuda.set_device(local_rank)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return current_device()


def current_device() -> torch.device:
    """This process's device: its CUDA device when there is one (see :func:`setup`), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def cpu_group() -> Any:
    """A process group for small CPU tensors: the default one where it is gloo, else a new gloo group over
    every rank (every rank must call this together)."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    return dist.new_group(backend="gloo")


def cleanup() -> None:
    """Leave the process group (if any)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (just ``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (in place on a copy)."""
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t)
        t /= world_size()
    return t
