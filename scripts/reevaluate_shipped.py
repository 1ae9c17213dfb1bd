"""Re-evaluate shipped checkpoints with today's evaluator, then rebuild their `results.json`.

    python scripts/reevaluate_shipped.py checkpoints/ml4 [checkpoints/ml10 ...] [--workers N]
    python scripts/reevaluate_shipped.py checkpoints/ml1 --rebuild-only   # after shipping a run

Each SAC run under a root is evaluated again with the settings its `evaluation.json` recorded
(variations, adaptation and evaluation episodes, seed), so files written before the evaluator
gained per-episode results (zero-shot, each adaptation episode, evaluation) get them. The file's
`command` becomes the `cmrl eval` line that reruns it on the shipped path, and `wall_time_s` is
today's. On-policy runs (rl2, maml) are left alone: their evaluator is `onpolicy.py`'s.

`results.json` is rebuilt from the shipped runs when every run it aggregated is shipped (ML4);
otherwise (ML10 ships seed 0 of runs aggregated over three) it is left as it is and the script
says so. The fine-tuning table and the command of the old `results.json` are kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmrl.agent_kinds import agent_kind  # noqa: E402
from cmrl.algo.trained_agent import load_agent  # noqa: E402
from cmrl.experiments.report import (RESULTS_FILE, aggregate_evaluations, find_runs,  # noqa: E402
                                     steps_to_success, training_curves)
from cmrl.runs.checkpoint import portable_paths  # noqa: E402

EVAL_FILE = "evaluation.json"


def recorded_settings(command: str) -> dict:
    """The evaluation settings named on an old file's `cmrl eval` command line."""
    args = argparse.ArgumentParser(add_help=False)
    args.add_argument("--variations", type=int, default=10)
    args.add_argument("--adaptation-episodes", type=int, default=3)
    args.add_argument("--eval-episodes", type=int, default=1)
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--split", default=None)
    ns, _ = args.parse_known_args(shlex.split(command or ""))
    return vars(ns)


def reevaluate(run: Path, workers: int | None) -> float:
    path = run / EVAL_FILE
    old = json.loads(path.read_text())
    s = recorded_settings(old.get("command", ""))
    agent = load_agent(run)
    splits = (s["split"],) if s["split"] else tuple(old["splits"])
    start = time.perf_counter()
    res = agent.evaluate(splits, s["variations"], s["adaptation_episodes"], s["eval_episodes"],
                         s["seed"], workers=workers)
    res["wall_time_s"] = round(time.perf_counter() - start, 2)
    rel = run.resolve().relative_to(ROOT)
    res["command"] = (f"python -m cmrl eval --checkpoint {rel} --variations {s['variations']} "
                      f"--adaptation-episodes {s['adaptation_episodes']} --eval-episodes "
                      f"{s['eval_episodes']} --seed {s['seed']} --json {rel / EVAL_FILE}")
    path.write_text(json.dumps(portable_paths(res, ROOT), indent=2))
    return res["wall_time_s"]


def rebuild_results(root: Path) -> bool:
    runs = find_runs(root)
    path = root / RESULTS_FILE
    old = json.loads(path.read_text()) if path.exists() else {}
    shipped = {str(d.resolve().relative_to(ROOT)) for dirs in runs.values() for d in dirs}
    aggregated = {r["dir"] for a in old.get("agents", {}).values() for r in a["runs"]}
    if aggregated - shipped:
        missing = len(aggregated - shipped)
        print(f"{path}: kept as it is ({missing} aggregated runs are not shipped)")
        return False
    curves = training_curves(runs)
    agents = aggregate_evaluations(runs)
    new = {**old, "agents": agents, "training_curves": curves,
           "steps_to_90": steps_to_success(curves, 0.9)}
    path.write_text(json.dumps(portable_paths(new, ROOT), indent=2))
    print(f"{path}: rebuilt from {len(shipped)} shipped runs")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", nargs="+", type=Path)
    p.add_argument("--workers", type=int, default=None,
                   help="evaluation processes (default: the cores)")
    p.add_argument("--rebuild-only", action="store_true",
                   help="keep the evaluation files as they are; only rebuild results.json")
    args = p.parse_args(argv)
    for root in args.roots:
        for dirs in ([] if args.rebuild_only else find_runs(root).values()):
            for run in dirs:
                if not (run / EVAL_FILE).exists():
                    continue
                config = json.loads((run / "config.json").read_text())["config"]
                if agent_kind(config["train"]["agent"]).on_policy:
                    continue
                print(f"{run}: {reevaluate(run, args.workers):.1f} s", flush=True)
        rebuild_results(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
