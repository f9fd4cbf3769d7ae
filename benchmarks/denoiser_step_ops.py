"""Benchmark: one MLP denoiser's forward and backward replayed op by op, each op timed on its own.

The profiler distorts these ops on CPU (it reported the bfloat16 weight casts at 12 ms each where they
take about 1 ms); this replays what ``MLPDenoiser`` and autograd run for a diffusion step, without autograd,
with a wall-clock timer around every op, so the dense products can be told from everything else.

    python benchmarks/denoiser_step_ops.py                       # DASRec's TikTok rows: 158 x 6,710, width 1,000, bfloat16
    python benchmarks/denoiser_step_ops.py --hidden 128 --precision float32
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
import torch.nn.functional as F

from lit_mmrec.runtime import keep_freed_memory_for_reuse


def main() -> None:
    keep_freed_memory_for_reuse()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=158, help="users per diffusion step")
    parser.add_argument("--items", type=int, default=6710, help="interaction row width (n_items)")
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--time-dim", type=int, default=10)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    n, hidden, rows = args.items, args.hidden, args.rows
    low = torch.bfloat16 if args.precision == "bfloat16" else torch.float32
    padded = rows + (-rows % 16 if low == torch.bfloat16 else 0)  # MLPDenoiser pads bfloat16 rows to 16
    w_in, b_in = torch.randn(hidden, n + args.time_dim) * 0.01, torch.zeros(hidden)
    w_out, b_out = torch.randn(n, hidden) * 0.01, torch.zeros(n)
    x, step = torch.randn(rows, n), torch.randn(padded, args.time_dim)
    seconds: dict[str, list[float]] = collections.defaultdict(list)

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        seconds[name].append(time.perf_counter() - start)
        return out

    for _ in range(args.repeats):
        wi = timed("cast W_in", lambda: w_in.to(low))
        wo = timed("cast W_out", lambda: w_out.to(low))
        xb = timed("cast + pad x", lambda: F.pad(x.to(low), (0, 0, 0, padded - rows)))
        sb = step.to(low)
        pre = timed("product: input layer", lambda: torch.addmm(torch.addmm(b_in.to(low), sb, wi[:, n:].T), xb, wi[:, :n].T))
        h = timed("tanh", lambda: torch.tanh(pre.float()).to(low))
        out = timed("product: output layer", lambda: torch.addmm(b_out.to(low), h, wo.T))
        y = timed("output cast", lambda: out[:rows].float())
        grad = torch.ones_like(y)
        gb = timed("gradient cast + pad", lambda: F.pad(grad.to(low), (0, 0, 0, padded - rows)))
        gw_out = timed("product: output weight gradient", lambda: gb.T @ h)
        gh = timed("product: hidden gradient", lambda: gb @ wo)
        timed("output bias gradient", lambda: gb.sum(0))
        timed("cast W_out gradient", lambda: gw_out.float())
        gpre = timed("tanh backward", lambda: gh * (1 - h * h))
        gw_in = wi.new_empty(wi.shape)
        timed("product: input weight gradient", lambda: gw_in[:, :n].addmm_(gpre.T, xb, beta=0))
        gw_in[:, n:] = gpre.T @ sb
        timed("cast W_in gradient", lambda: gw_in.float())
    warm = max(1, args.repeats // 5)
    medians = {name: statistics.median(values[warm:]) * 1e3 for name, values in seconds.items()}
    products = sum(v for name, v in medians.items() if name.startswith("product"))
    casts = sum(v for name, v in medians.items() if name.startswith("cast"))
    for name, value in medians.items():
        print(f"{name:34s} {value:7.2f} ms")
    total = sum(medians.values())
    print(f"{'total':34s} {total:7.2f} ms (products {products:.1f}, casts {casts:.1f}, other {total - products - casts:.1f}); "
          f"{torch.get_num_threads()} threads, {rows} x {n} x {hidden}, {args.precision}")


if __name__ == "__main__":
    main()
