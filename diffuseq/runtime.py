"""Process settings: per-rank logging of the commands, and the CPU memory setting of training and decoding.

glibc's ``malloc`` serves large blocks with ``mmap`` and gives freed memory at
the top of the heap back to the OS. A training or denoising step allocates and
frees the same MB-sized activations again and again, so every step maps fresh
pages that the kernel must zero on first touch: about 10,000 page faults per
forward pass of the benchmark model (10% of its time) and 27,000 per training
step. :func:`keep_freed_memory` makes ``malloc`` serve every block from the heap
and keep freed memory for reuse; the peak resident memory stays about the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

logger = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREE_BYTES = 2**30  # freed memory at the top of the heap kept for reuse

_applied = False


def keep_freed_memory() -> bool:
    """No ``mmap`` per allocation, and up to 1 GB of freed heap kept; True where the C library took it.

    Does nothing (and returns False) where the C library is not glibc. Calling it again is harmless.
    """
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        logger.debug("no mallopt in the C library (%s): allocator settings left as they are", name)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES))
    return _applied


OPT_OUT = "DIFFUSEQ_KEEP_FREED_MEMORY"


def keep_freed_memory_on(device) -> None:
    """Apply :func:`keep_freed_memory` for work on a CPU ``device``, unless ``DIFFUSEQ_KEEP_FREED_MEMORY=0``.

    Called by the training loop and the decoder when they start on a CPU; it changes glibc's
    settings for the whole process, so it is logged, and skipped on GPUs (whose memory has its
    own caching allocator).
    """
    if getattr(device, "type", device) != "cpu" or os.environ.get(OPT_OUT, "1") == "0" or _applied:
        return
    if keep_freed_memory():
        logger.info("malloc keeps freed memory for reuse (mmap off, 1 GB trim threshold): fewer page faults on a "
                    "CPU; %s=0 turns it off", OPT_OUT)


def start_command() -> int:
    """Log at INFO on rank 0 and WARNING elsewhere, with the rank in every line.

    Returns this process's rank (0 outside a distributed launch).
    """
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", datefmt="%H:%M:%S")
    return rank


PRECISIONS = ("fp32", "bf16", "fp16")  # the arithmetic of the network: --precision (training), --dtype (decoding)


def autocast_dtype(precision: str):
    """The autocast dtype of ``precision`` (one of :data:`PRECISIONS`): None for ``fp32`` (no autocast),
    bfloat16, float16."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def cuda_tf32(enabled: bool | None = None) -> bool:
    """Whether CUDA float32 matmuls and convolutions may use TF32; sets it first when ``enabled`` is given.

    torch >= 2.9 spells it ``torch.backends.cuda.matmul.fp32_precision = "tf32" | "ieee"``, earlier
    releases ``allow_tf32``; both are process-wide, so only a run that asked for TF32 (the training
    and decoding commands on CUDA, by default) sets it.
    """
    import torch

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if enabled is not None:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = "tf32" if enabled else "ieee"
            conv.conv.fp32_precision = "tf32" if enabled else "ieee"
        else:
            matmul.allow_tf32 = enabled
            conv.allow_tf32 = enabled
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return bool(matmul.allow_tf32)


def use_tf32_on(device, enabled: bool, precision: str = "fp32") -> None:
    """Apply ``--tf32`` for work in ``precision`` on ``device``, with one log line (nothing on a CPU)."""
    if getattr(device, "type", device) != "cuda" or precision != "fp32":
        return
    cuda_tf32(enabled)
    logger.info("float32 matmuls on CUDA %s (--tf32 %s%s)", "in TF32" if enabled else "in full float32 (IEEE)",
                str(enabled).lower(), "; as torch 1.9, which the paper used, did by default" if enabled else "")


class full_fp32_matmul:
    """A context in which CUDA float32 matmuls run in full float32 even where TF32 is on (restored after)."""

    def __enter__(self) -> "full_fp32_matmul":
        self.previous = cuda_tf32()
        if self.previous:
            cuda_tf32(False)
        return self

    def __exit__(self, *_: object) -> None:
        if self.previous:
            cuda_tf32(True)


def compile_model(model):
    """``torch.compile(model)`` (``--compile``), logged; the CPU fast paths of :mod:`diffuseq.model.kernels`
    step aside inside a compiled graph so that the compiler sees plain operators."""
    import torch

    logger.info("torch.compile: the first steps compile the denoiser (seconds to minutes)")
    return torch.compile(model)
