"""Do two update paths learn alike? Pairs of runs that differ only in `sac.update_impl`, one pair per
seed, compared by the rule fixed in docs/cpu_fast_learning_plan.md before the seeds ran.

Each argument is a directory holding `eager/` and `fast/` run directories (what
`scripts/speed_check.sh` writes for one seed), each with its metrics.jsonl and the project
evaluator's evaluation.json. Per metric the two paths' means and sample stds over the seeds and
Welch's t are printed; the paths "learn alike" when |t| < T_LIMIT for every metric. With three seeds
this catches only large differences; the update-by-update equality tests are the stronger evidence.

    python -m cmrl.experiments.learning_check runs/speed-check-s0 runs/speed-check-s1 ... [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..runs.logger import read_metrics

PATHS = ("eager", "fast")
LOSSES = ("kl", "critic_loss", "bc_mse")
T_LIMIT = 2.0


def run_figures(run_dir: Path) -> dict[str, float]:
    """One run's figures: each loss at the last logged step and averaged over the logged steps from
    1,000 on (the curve), and the mean meta-train success after adaptation (evaluation.json)."""
    rows = [r for r in read_metrics(run_dir) if all(k in r for k in LOSSES)]
    if not rows:
        raise ValueError(f"{run_dir}: no metrics rows with {', '.join(LOSSES)}")
    curve = [r for r in rows if r["step"] >= 1000] or rows
    out = {"steps": float(rows[-1]["step"]), "wall_time_s": float(rows[-1].get("wall_time", math.nan))}
    for k in LOSSES:
        out[f"{k}_final"] = float(rows[-1][k])
        out[f"{k}_curve_mean"] = sum(float(r[k]) for r in curve) / len(curve)
    try:
        ev = json.loads((run_dir / "evaluation.json").read_text())
        tasks = ev["splits"]["train"]["tasks"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{run_dir}: no meta-train evaluation ({type(e).__name__}: {e}); run "
                         "`python -m cmrl eval ... --split train --json evaluation.json`") from e
    for task, v in tasks.items():
        out[f"success/{task}"] = float(v["success_rate"])
    out["success_mean"] = sum(float(v["success_rate"]) for v in tasks.values()) / len(tasks)
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
    return m, s


def welch_t(a: list[float], b: list[float]) -> float:
    """(mean b - mean a) / sqrt(s_a^2/n_a + s_b^2/n_b); 0 when both are constant and equal, inf when
    they are constant and differ."""
    (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
    se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    if se == 0 or math.isnan(se):
        return 0.0 if ma == mb else math.copysign(math.inf, mb - ma)
    return (mb - ma) / se


JUDGED = tuple(f"{k}_{w}" for k in LOSSES for w in ("final", "curve_mean")) + ("success_mean",)


def compare(seed_dirs: list[Path]) -> dict:
    """Per seed the figures of both paths; per metric the means, stds, Welch t and whether it
    passes; `learn_alike`: every judged metric passes (needs at least 2 seeds)."""
    if len(seed_dirs) < 2:
        raise ValueError("needs at least 2 seeds (one directory per seed) to estimate seed noise")
    per_seed = {str(d): {p: run_figures(Path(d) / p) for p in PATHS} for d in seed_dirs}
    keys = [k for k in next(iter(per_seed.values()))["eager"] if k != "steps"]
    metrics = {}
    for k in keys:
        a = [s["eager"][k] for s in per_seed.values()]
        b = [s["fast"][k] for s in per_seed.values()]
        (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
        t = welch_t(a, b)
        metrics[k] = {"eager_mean": ma, "eager_std": sa, "fast_mean": mb, "fast_std": sb, "t": t,
                      "judged": k in JUDGED, "passes": abs(t) < T_LIMIT if k in JUDGED else None}
    return {"seeds": len(seed_dirs), "rule": f"|Welch t| < {T_LIMIT} for {', '.join(JUDGED)}",
            "per_seed": per_seed, "metrics": metrics,
            "learn_alike": all(m["passes"] for m in metrics.values() if m["judged"])}


def print_report(result: dict) -> None:
    n = result["seeds"]
    print(f"fast vs eager over {n} seeds (mean ± sample std); rule: {result['rule']}")
    print("metric | eager | fast | Welch t | judged")
    for k, m in result["metrics"].items():
        verdict = ("pass" if m["passes"] else "FAIL") if m["judged"] else "-"
        print(f"{k} | {m['eager_mean']:.3f} ± {m['eager_std']:.3f} | {m['fast_mean']:.3f} ± "
              f"{m['fast_std']:.3f} | {m['t']:+.2f} | {verdict}")
    for d, s in result["per_seed"].items():
        print(f"{d}: success eager {s['eager']['success_mean']:.2f}, fast {s['fast']['success_mean']:.2f};"
              f" wall eager {s['eager']['wall_time_s']:.0f} s, fast {s['fast']['wall_time_s']:.0f} s")
    print("fast learns like eager (rule holds)" if result["learn_alike"]
          else "the rule FAILS for: " + ", ".join(k for k, m in result["metrics"].items()
                                                   if m["judged"] and not m["passes"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seed_dirs", nargs="+", type=Path, help="one directory per seed, holding eager/ and fast/")
    ap.add_argument("--json", type=Path, help="also write the comparison here")
    args = ap.parse_args(argv)
    try:
        result = compare(args.seed_dirs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
