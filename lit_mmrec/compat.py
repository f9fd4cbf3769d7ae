"""Every use of a private API of torch, Lightning or W&B, each behind a public fallback.

The versions these were written against are the upper bounds in ``pyproject.toml``; when a private name
disappears the fallback keeps lit_mmrec correct (sometimes slower), and ``tests/test_compat.py`` checks
both paths.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


# ---- torch ----
def onednn_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 products natively on this CPU (AVX512-BF16 or AMX).
    Fallback: False (the caller then treats bfloat16 as emulated)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(torch.backends.mkldnn.is_available() and probe is not None and probe())
    except (AttributeError, RuntimeError):
        return False


def _onednn_linear_kernel() -> Any | None:
    try:
        if torch.backends.mkldnn.is_available():
            return getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    except (AttributeError, RuntimeError):
        pass
    return None


_ONEDNN_LINEAR = _onednn_linear_kernel()


def onednn_linear(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor | None:
    """``rows @ table.T`` by oneDNN's linear kernel (what ``torch.compile`` emits for ``nn.Linear`` on CPU);
    None where the kernel is not there, and the caller uses the plain product."""
    if _ONEDNN_LINEAR is None:
        return None
    return _ONEDNN_LINEAR(rows.contiguous(), table.contiguous(), None, "none", [], "")


# ---- Lightning ----
def ddp_finds_unused_parameters(strategy: Any) -> bool:
    """Whether a DDP strategy was configured with ``find_unused_parameters=True``.
    Fallback: the strategy's name (``ddp_find_unused_parameters_true``) where its kwargs are private."""
    kwargs = getattr(strategy, "_ddp_kwargs", None)
    if isinstance(kwargs, dict):
        return bool(kwargs.get("find_unused_parameters", False))
    return "find_unused_parameters_true" in str(getattr(strategy, "strategy_name", ""))


def save_last_checkpoint(callback: Any, trainer: Any) -> None:
    """Have a ``ModelCheckpoint`` write its ``last.ckpt`` now, under its own rules (fit only, no sanity check
    or fast_dev_run, not twice in one step). Fallback: ``trainer.save_checkpoint`` to the callback's last path."""
    skip = getattr(callback, "_should_skip_saving_checkpoint", None)
    save = getattr(callback, "_save_last_checkpoint", None)
    candidates = getattr(callback, "_monitor_candidates", None)
    if skip is not None and save is not None and candidates is not None:
        if not skip(trainer):
            save(trainer, candidates(trainer))
        return
    if trainer.sanity_checking or trainer.fast_dev_run or callback.dirpath is None:
        return
    path = f"{callback.dirpath}/{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    trainer.save_checkpoint(path)
    callback.last_model_path = path


# ---- W&B (through Lightning's WandbLogger) ----
def wandb_logger_defaults(logger: Any, name: str, save_dir: str) -> None:
    """Before a ``WandbLogger``'s run starts: give it ``name`` and ``save_dir`` unless it was configured with
    its own. Fallback: Lightning's public constructor arguments were the only place; then nothing changes
    and a warning says so."""
    init = getattr(logger, "_wandb_init", None)
    if not isinstance(init, dict):
        log.warning("this Lightning's WandbLogger keeps its settings elsewhere; the run keeps W&B's default "
                    "name and folder")
        return
    if not init.get("name"):
        init["name"] = name
        if hasattr(logger, "_name"):
            logger._name = name
    if not init.get("dir"):
        init["dir"] = save_dir
        if hasattr(logger, "_save_dir"):
            logger._save_dir = save_dir


def wandb_logger_resume(logger: Any, run_id: str) -> None:
    """Before a ``WandbLogger``'s run starts: continue the W&B run ``run_id`` (``id`` and ``resume="allow"``)
    unless the logger was configured with an id of its own. Fallback: as :func:`wandb_logger_defaults`, a
    warning, and the resumed training logs to a new W&B run."""
    init = getattr(logger, "_wandb_init", None)
    if not isinstance(init, dict):
        log.warning("this Lightning's WandbLogger keeps its settings elsewhere; the resumed run logs to a new "
                    "W&B run")
        return
    if not init.get("id"):
        init["id"] = run_id
        init["resume"] = "allow"
        if hasattr(logger, "_id"):
            logger._id = run_id
