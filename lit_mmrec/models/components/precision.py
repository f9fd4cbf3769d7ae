"""Reduced-precision matrix products, shared by the denoisers and the contrastive losses.

A model's ``*_precision`` option (``float32`` or ``bfloat16``) names the arithmetic of one family of its
dense products. ``bfloat16`` is mixed precision as ``torch.autocast`` does it, confined to those products:
inputs and weights are rounded to bfloat16 for the product (which accumulates in float32 and rounds its
result to bfloat16); parameters, gradients and optimizer state stay float32. It pays off only where the
device multiplies bfloat16 natively (:func:`native_bfloat16_products`).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F

from lit_mmrec.compat import onednn_bf16_supported

log = logging.getLogger(__name__)

ProductPrecision = Literal["float32", "bfloat16"]
_COMPUTE_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}

PRODUCT_ROW_MULTIPLE = 16


def compute_dtype(precision: ProductPrecision, option: str = "precision") -> torch.dtype | None:
    """The dtype of products run at ``precision``; ``None`` for the operands' own (float32) dtype.
    ``option`` names the setting in the error for an unknown value."""
    if precision not in _COMPUTE_DTYPES:
        raise ValueError(f"{option} must be one of {sorted(_COMPUTE_DTYPES)}, got {precision!r}")
    return _COMPUTE_DTYPES[precision]


def native_bfloat16_products(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run on dedicated hardware on ``device``: CUDA devices of compute
    capability 8.0 (Ampere) or later, CPUs where oneDNN finds AVX512-BF16 or AMX. Elsewhere torch
    emulates them, more slowly than float32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        return onednn_bf16_supported()
    return False


def warn_if_emulated(precision: ProductPrecision, device: torch.device, option: str = "denoiser_precision") -> None:
    """Log a warning when the setting ``option`` = ``precision`` asks for bfloat16 products that
    ``device`` can only emulate."""
    if precision == "bfloat16" and not native_bfloat16_products(device):
        log.warning("%s 'bfloat16' on %s: this device has no bfloat16 matrix units (CPU: AVX512-BF16 or AMX; "
                    "GPU: compute capability 8.0+), so the products are emulated and slower than float32; "
                    "use %s 'float32' here", option, device, option)


def pad_rows(x: torch.Tensor, multiple: int = PRODUCT_ROW_MULTIPLE) -> torch.Tensor:
    """``x`` [B, ...] with zero rows appended up to a multiple of ``multiple`` rows (``x`` itself if it is one).

    oneDNN builds (and caches) a kernel for every new matrix shape, which for the denoisers' bfloat16
    products takes about as long as the product itself. The batch-dependent row
    counts of DiffCL's denoisers and of the contrastive losses (a batch's unique users and items) change
    every step, so without padding nearly every bfloat16 product paid it; rounded up to a multiple of 16
    rows a run sees a handful of shapes. Zero rows add nothing to the products' gradients with respect to
    the other operand, and callers drop the padded output rows.
    """
    missing = -x.shape[0] % multiple
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, missing)) if missing else x
