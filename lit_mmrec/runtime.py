"""Process-level set-up and teardown of the ``lit_mmrec`` command: allocator tuning applied before any
tensor is allocated, and the distributed process group released once the subcommand has returned."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_MMAP_THRESHOLD = 32 * 1024**2  # glibc's ceiling for this parameter on 64-bit
_TRIM_THRESHOLD = 1024**3
_TOP_PAD = 64 * 1024**2


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc's allocator keep freed tensor memory instead of returning it to the kernel.

    By default glibc gives large freed blocks back to the kernel (``mmap``-ed blocks are unmapped, the
    top of the heap is trimmed), so the full-table CPU tensors of a training step (6.8 MB each for
    Baby's 26,495 x 64 embeddings) are page-faulted in again step after step (docs/benchmarks.md). This
    serves every block from the heap (no ``mmap`` at all: glibc caps the mmap threshold at 32 MiB, and at
    Sports scale DiffCL's 53,955 x 384 tables are 83 MB, which would be page-faulted in on every use) and
    keeps up to 1 GiB of freed
    heap. It is what PyTorch's CPU tuning guide gets with jemalloc/tcmalloc, without a preloaded
    library; the price is a somewhat higher peak RSS, since freed blocks stay in the process. Only glibc
    (Linux); elsewhere, or with ``LIT_MMREC_MALLOC_TUNING=0``, nothing changes. Returns whether it applied.
    """
    if os.environ.get("LIT_MMREC_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no glibc mallopt here; allocator left as it is")
        return False
    applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD)))
    log.debug("glibc malloc tuning %s", "applied" if applied else "refused")
    return applied


def release_process_group() -> bool:
    """Destroy the default ``torch.distributed`` process group, if one is up; returns whether one was.

    Lightning's DDP strategy initialises the group but registers its destruction at exit only for NCCL.
    A gloo group (DDP on CPU) left alive until interpreter shutdown can abort the process with
    ``terminate called without an active exception`` (SIGABRT) after all the work is done: gloo's worker
    threads still hold finished work whose tensors are released while Python is being torn down. The
    ``lit_mmrec`` command calls this once its subcommand has returned, when no collective is pending.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    backend = dist.get_backend()
    dist.destroy_process_group()
    log.info("released the %s process group", backend)
    return True


# third-party notices that say nothing about the run: (warning message regex, why it is dropped)
_QUIET_WARNINGS = (
    r".*`tensorboardX` has been removed as a dependency.*",  # lit_mmrec logs to CSV (and W&B) on purpose
    r".*isinstance\(treespec, LeafSpec\).*",  # Lightning's own use of a deprecated torch API
    r".*does not have many workers.*",  # the training batches are built in memory; workers would copy them
    r".*LightningCLI's args parameter is intended.*",  # the command hands LightningCLI its own arguments
)
_QUIET_MESSAGES = ("💡 Tip:",)  # Lightning's advertisements for hosted loggers


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _QUIET_MESSAGES)


def quiet_third_party_notices() -> None:
    """Filter the third-party notices that say nothing about the run, and let Lightning's and torchmetrics'
    records go through the command's single log handler instead of printing each line twice."""
    import warnings

    import lightning  # noqa: F401  (installs its handlers, which are replaced here)
    import torchmetrics  # noqa: F401

    for pattern in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if logging.getLogger().handlers:
        for name in ("lightning", "torchmetrics"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropNotices) for f in handler.filters):
            handler.addFilter(_DropNotices())


def available_memory_bytes(device="cpu") -> int:
    """Memory a new allocation can take now: the free memory of a CUDA device, else the host's available
    memory (``MemAvailable`` in ``/proc/meminfo`` on Linux, free physical pages elsewhere)."""
    import torch  # not at import time: the allocator tuning above must come before torch's first allocations

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
