"""Benchmark: the dense products of the diffusion denoisers and of InfoNCE in float32 and bfloat16, on this machine.

Times each denoiser product at the shapes DiffCL and DASRec run on TikTok (batch rows x input x output), as
``torch.matmul`` in float32 (MKL on x86 CPUs), through oneDNN's float32 linear kernel, and in bfloat16 (what
``denoiser_precision: bfloat16`` runs), and whether this device multiplies bfloat16 natively; then one
InfoNCE call (forward and backward, 128-d) at several row counts at each ``contrastive_precision``. Use it
to decide whether ``configs/precision/bf16_denoisers.yaml`` or ``bf16_contrastive.yaml`` pays off on a machine
(the row counts of a model's InfoNCE calls are a batch's unique users and unique items).

    python benchmarks/dense_products.py            # CPU, all threads
    python benchmarks/dense_products.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lit_mmrec.models.components import info_nce, inner_product_scores
from lit_mmrec.models.components.precision import native_bfloat16_products

# (name, rows, inner, out): the forward products and the backward weight-gradient product of the denoisers
SHAPES = [
    ("dasrec input layer", 158, 6720, 1000),
    ("dasrec output layer", 158, 1000, 6710),
    ("dasrec input-weight gradient", 1000, 158, 6710),
    ("dasrec generation output", 2048, 1000, 6710),
    ("diffcl input layer (views)", 2400, 144, 256),
    ("diffcl output layer (views)", 2400, 256, 128),
]
INFO_NCE_ROWS = [400, 800, 1200, 2400]  # TikTok, batch 1,024: about 400 unique users and 800 unique items


def median_ms(fn, device: torch.device, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    onednn = device.type == "cpu" and torch.backends.mkldnn.is_available()
    rows = []
    for name, m, k, n in SHAPES:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        b_rows = b.T.contiguous()  # [n, k], a linear layer's weight
        a16, b16 = a.bfloat16(), b.bfloat16()
        exact = a.double() @ b.double()
        gflop = 2 * m * k * n / 1e9
        row = {"product": name, "shape": f"{m} x {k} x {n}",
               "float32_ms": round(median_ms(lambda: a @ b, device, args.repeats), 2)}
        if onednn:  # the scoring helper's oneDNN linear kernel (taken without autograd)
            row["float32_onednn_ms"] = round(median_ms(lambda: inner_product_scores(a, b_rows), device, args.repeats), 2)
        row["bfloat16_ms"] = round(median_ms(lambda: a16 @ b16, device, args.repeats), 2)
        row["bfloat16_relative_error"] = float(f"{((a16 @ b16).double() - exact).norm() / exact.norm():.2e}")
        row["float32_gflops"] = round(gflop / row["float32_ms"] * 1e3)
        row["bfloat16_gflops"] = round(gflop / row["bfloat16_ms"] * 1e3)
        rows.append(row)
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                      "native_bfloat16_products": native_bfloat16_products(device), "products": rows,
                      "info_nce": [info_nce_row(n, device, args.repeats) for n in INFO_NCE_ROWS]}, indent=2))


def info_nce_row(n: int, device: torch.device, repeats: int) -> dict:
    """One InfoNCE call on n x 128 views, forward and backward, at each precision (ms)."""
    views = [torch.randn(n, 128, device=device, requires_grad=True) for _ in range(2)]
    row = {"rows": n}
    for precision in ("float32", "bfloat16"):
        def call() -> None:
            with torch.enable_grad():
                info_nce(*views, 0.4, precision).backward()
        row[f"{precision}_ms"] = round(median_ms(call, device, repeats), 2)
    return row


if __name__ == "__main__":
    main()
