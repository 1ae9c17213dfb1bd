"""The evidence for `modular_net.fast_kernels_pay`: whole fast updates with the fast soft-modular
kernels forced on, against the same updates with the reference kernels forced on, interleaved in one
process (separate learners, both under the fast path's allocator setting). It prints the ratio
and which of the two the library's rule picks at that batch and thread count.

    python scripts/fast_kernel_rule.py --batch 256 --agents cmrl sm [--threads 2] [--seconds 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere

import torch

from cmrl.experiments.bench import _update_fixture, describe_machine, interleaved
from cmrl.nets import modular_net


def compare(kind: str, batch: int, seconds: float, rounds: int = 16) -> dict:
    """Updates/s of the fast update of `kind` (3 tasks x `batch`) with the fast kernels and with
    the reference kernels, their ratio, and the kernels the library's rule picks here."""
    rule = modular_net.fast_kernels_pay
    cpu = torch.device("cpu")
    picks = "fast" if rule(3 * batch, cpu) else "reference"
    _, with_fast = _update_fixture(kind, batch, cpu, "fast")
    _, with_reference = _update_fixture(kind, batch, cpu, "fast")

    def fast_kernels():
        modular_net.fast_kernels_pay = lambda rows, device: True
        with_fast()

    def reference_kernels():
        modular_net.fast_kernels_pay = lambda rows, device: False
        with_reference()

    try:
        r = interleaved({"fast_kernels": fast_kernels, "reference_kernels": reference_kernels},
                        seconds, rounds=rounds)
    finally:
        modular_net.fast_kernels_pay = rule
    return {**r, "reference_over_fast": r["ratio"]["reference_kernels"], "rule_picks": picks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", nargs="+", default=["cmrl", "sm"])
    ap.add_argument("--batch", type=int, default=256, help="transitions per task (3 tasks)")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_machine())
    for kind in args.agents:
        r = compare(kind, args.batch, args.seconds)
        print(f"{kind} 3 x {args.batch}: upd/s " + ", ".join(f"{k} {v:.2f}" for k, v in r["per_s"].items())
              + f"; reference / fast {r['reference_over_fast']:.3f}; the rule picks {r['rule_picks']}",
              flush=True)


if __name__ == "__main__":
    main()
