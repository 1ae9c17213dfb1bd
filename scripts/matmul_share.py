"""Where an update's time goes: the share spent in matmuls and the rate those matmuls run at, against
this machine's dense fp32 matmul peak measured in the same process (issue 13's ceiling argument).

If matmuls take a share m of the update and run at a fraction f of the peak, then no change that
keeps the same FLOPs can make the update more than 1 / (m * f) times faster (every other op gone,
every matmul at the peak); the script prints that bound.

    python scripts/matmul_share.py --agents pearl cmrl sm --impl eager --batch 256 [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

import torch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from cmrl.experiments.bench import _update_fixture, describe_machine, matmul_peak

MATMULS = ("aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm")


def measure(kind: str, impl: str, batch: int, seconds: float, peak: float) -> dict:
    device = torch.device("cpu")
    _, step = _update_fixture(kind, batch, device, impl)
    for _ in range(10):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    n, start = 0, time.perf_counter()
    while n < 5 or time.perf_counter() - start < seconds:
        step()
        n += 1
    per_update = (time.perf_counter() - start) / n
    with profile() as prof:
        for _ in range(10):
            step()
    events = prof.key_averages()
    matmul_us = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
    total_us = sum(e.self_cpu_time_total for e in events)
    share = matmul_us / total_us
    rate = flops / (matmul_us / 10 * 1e-6) / 1e9
    return {"agent": kind, "impl": impl, "updates_per_s": 1 / per_update,
            "gflop_per_update": flops / 1e9, "gflops_overall": flops / per_update / 1e9,
            "matmul_share": share, "matmul_gflops": rate, "matmul_fraction_of_peak": rate / peak,
            "bound_same_flops": 1 / (share * rate / peak)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", nargs="+", default=["pearl", "cmrl", "sm"])
    ap.add_argument("--impl", default="eager")
    ap.add_argument("--batch", type=int, default=256, help="transitions per task (3 tasks)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # the best of several tries: on a shared VM a single 2 s window often lands on a slow stretch
    peaks = [matmul_peak(torch.device("cpu"), 2.0) for _ in range(4)]
    square = max(p["square_1024_gflops"] for p in peaks)
    layer = max(p["layer_768x256x256_gflops"] for p in peaks)
    peak = max(square, layer)
    print(f"{describe_machine()}; "
          f"dense fp32 matmul peak {peak:.0f} GFLOP/s (best of 4 tries of a 1024^3 matmul, {square:.0f}, "
          f"and of a [768 x 256] @ [256 x 256] layer, {layer:.0f})")
    for kind in args.agents:
        r = measure(kind, args.impl, args.batch, args.seconds, peak)
        if r["matmul_fraction_of_peak"] > 1:
            print("  (the matmuls beat the measured peak, so it was measured on a slow stretch; "
                  "the bound below is then too low)")
        print(f"{kind} {args.impl} 3 x {args.batch}: {r['updates_per_s']:.1f} upd/s, "
              f"{r['gflop_per_update']:.2f} GFLOP/update ({r['gflops_overall']:.0f} GFLOP/s overall); "
              f"matmuls {r['matmul_share']:.0%} of the time at {r['matmul_gflops']:.0f} GFLOP/s "
              f"({r['matmul_fraction_of_peak']:.0%} of peak); same-FLOPs bound: "
              f"{r['bound_same_flops']:.2f}x this path", flush=True)


if __name__ == "__main__":
    main()
