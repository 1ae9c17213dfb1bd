"""ML10 success by task group: goal-position tasks, object-state tasks and held-out tasks.

    python scripts/ml10_groups.py ROOT [--json OUT]

ROOT holds run directories (as `cmrl report` reads them) with their evaluation files. Per agent, per
group, the mean over the group's tasks and the seeds (± sample std over seeds of the group mean) of:
- the project evaluator (`evaluation.json`): the zero-shot episode (goal text only, no transitions)
  and the evaluation episode after 3 adaptation episodes;
- Meta-World's `metalearning_evaluation`: `metaworld_evaluation_zeroshot.json` (0 adaptation
  episodes) and `metaworld_evaluation.json` (after adaptation).
Groups: the meta-train tasks whose goal position is hidden (`cmrl.envs.tasks.ML10_GOAL_POSITION_TASKS`:
only the rewards can reveal it), the other meta-train tasks (the objects in the scene say what to
do), and the held-out tasks. A file a run lacks leaves its cells at "-".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from cmrl.experiments.report import find_runs
from cmrl.envs.tasks import ML10_GOAL_POSITION_TASKS

COLUMNS = (  # (column name, evaluation file, key of a task's entry)
    ("zero-shot", "evaluation.json", "zero_shot_success"),
    ("adapted", "evaluation.json", "success_rate"),
    ("MW zero-shot", "metaworld_evaluation_zeroshot.json", "success_rate"),
    ("MW adapted", "metaworld_evaluation.json", "success_rate"),
)


def _group(task: str, split: str) -> str:
    if split == "test":
        return "held out"
    return "goal position" if task in ML10_GOAL_POSITION_TASKS else "object state"


def group_means(root: Path) -> dict:
    """{agent: {group: {column: {"mean", "std", "n"}}}}: mean over tasks per seed, then over
    seeds."""
    out: dict = {}
    for agent, runs in find_runs(root).items():
        per_seed: dict = {}
        for run in runs:
            for column, name, key in COLUMNS:
                path = run / name
                if not path.is_file():
                    continue
                ev = json.loads(path.read_text())
                sums: dict[str, list[float]] = {}
                for split, part in ev["splits"].items():
                    for task, r in part["tasks"].items():
                        if r.get(key) is not None:
                            sums.setdefault(_group(task, split), []).append(float(r[key]))
                for group, values in sums.items():
                    per_seed.setdefault(group, {}).setdefault(column, []).append(np.mean(values))
        out[agent] = {g: {c: {"mean": float(np.mean(v)),
                              "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                              "n": len(v)} for c, v in cols.items()}
                      for g, cols in per_seed.items()}
    return out


def markdown(table: dict) -> str:
    groups = ("goal position", "object state", "held out")
    cols = [c for c, _, _ in COLUMNS]
    lines = ["| agent | group | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for agent, by_group in table.items():
        for g in groups:
            cells = [f"{e['mean']:.2f} ± {e['std']:.2f} (n={e['n']})" if (e := by_group.get(g, {})
                     .get(c)) else "-" for c in cols]
            lines.append(f"| {agent} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--json", help="also write the table here")
    args = p.parse_args(argv)
    table = group_means(Path(args.root))
    if not table:
        print(f"no run directories under {args.root}", file=sys.stderr)
        return 1
    print(markdown(table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
