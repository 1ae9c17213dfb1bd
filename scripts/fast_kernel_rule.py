"""The evidence for `modular_net.fast_kernels_pay`: whole fast updates under the CPU rule (fast
soft-modular kernels from FAST_KERNEL_ROWS rows per intra-op thread) and under the plain row count
(from FAST_KERNEL_ROWS rows, the rule before it), with eager beside them, interleaved in one
process (separate learners). All three run under the fast path's allocator setting
(`sac.keep_freed_memory`, set by the fast learners), so the ratios to eager here leave the
allocator out; `python -m cmrl bench` gives fast/eager as training sees it, each in its own process.
(Before 2026-11-27 this script forced glibc's initial thresholds on eager's windows, which made
eager slower than in any real run; its ratios to eager then were too high.)

    python scripts/fast_kernel_rule.py --batch 128 --agents cmrl sm [--threads 2] [--seconds 36]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

import torch

from cmrl.experiments.bench import _update_fixture, interleaved, machine_info
from cmrl.nets import modular_net


def compare(kind: str, batch: int, seconds: float, rounds: int = 12) -> dict:
    """Updates/s and ratios to eager of: eager, fast under the row count alone, fast under the
    per-thread rule (3 tasks x `batch`), all under the fast path's allocator setting."""
    per_thread = modular_net.fast_kernels_pay

    def row_count(rows: int, device: torch.device) -> bool:
        return rows >= modular_net.FAST_KERNEL_ROWS

    cpu = torch.device("cpu")
    _, eager = _update_fixture(kind, batch, cpu, "eager")
    _, fast_a = _update_fixture(kind, batch, cpu, "fast")
    _, fast_b = _update_fixture(kind, batch, cpu, "fast")

    def rows_rule():
        modular_net.fast_kernels_pay = row_count
        fast_a()

    def thread_rule():
        modular_net.fast_kernels_pay = per_thread
        fast_b()

    try:
        r = interleaved({"eager": eager, "fast_row_count": rows_rule, "fast_per_thread": thread_rule},
                        seconds, rounds=rounds)
    finally:
        modular_net.fast_kernels_pay = per_thread
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", nargs="+", default=["cmrl", "sm"])
    ap.add_argument("--batch", type=int, default=128, help="transitions per task (3 tasks)")
    ap.add_argument("--seconds", type=float, default=36.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m = machine_info()
    print(f"{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}, load {m['load_avg_1min']}")
    for kind in args.agents:
        r = compare(kind, args.batch, args.seconds)
        print(f"{kind} 3 x {args.batch}: upd/s " + ", ".join(f"{k} {v:.2f}" for k, v in r["per_s"].items())
              + "; vs eager " + ", ".join(f"{k} {v:.3f}x" for k, v in r["ratio"].items() if k != "eager"),
              flush=True)


if __name__ == "__main__":
    main()
