"""Per-episode success (zero-shot, each adaptation episode, evaluation) as a markdown table, mean
± sample std over the seeds' evaluation files, for the README's adaptation section.

    python scripts/adaptation_table.py "point pearl=runs/point-pearl-s*/eval.json" \
        --split test --task point-robot

Each row is LABEL=GLOB[,GLOB...]: the evaluation files (`cmrl eval --json` or `evaluation.json`)
of one agent, one per seed. `--task` picks one task (default: the mean over the split's tasks).
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np


def episodes(path: str, split: str, task: str | None) -> tuple[list[str], np.ndarray]:
    """(phase names, success per episode) of one evaluation file."""
    tasks = json.load(open(path))["splits"][split]["tasks"]
    picked = [tasks[task]] if task else list(tasks.values())
    if not picked or "success_by_episode" not in picked[0]:
        raise SystemExit(f"{path}: no per-episode results for {split}/{task or 'all tasks'}")
    return picked[0]["episode_phases"], np.mean([t["success_by_episode"] for t in picked], axis=0)


def row(label: str, pattern: str, split: str, task: str | None) -> tuple[list[str], str]:
    files = sorted(f for part in pattern.split(",") for f in glob.glob(part))
    if not files:
        raise SystemExit(f"no file matches {pattern}")
    parts = [episodes(f, split, task) for f in files]
    phases = parts[0][0]
    s = np.stack([p[1] for p in parts])
    sd = s.std(0, ddof=1) if len(s) > 1 else np.zeros(s.shape[1])
    cells = [f"{m:.2f} ± {d:.2f}" if len(s) > 1 else f"{m:.2f}" for m, d in zip(s.mean(0), sd)]
    gain = s[:, -1] - s[:, 0]
    return phases, f"| {label} | {' | '.join(cells)} | {gain.mean():+.2f} | {len(s)} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+", help="LABEL=GLOB")
    p.add_argument("--split", default="test")
    p.add_argument("--task", default=None)
    args = p.parse_args(argv)
    lines, header = [], None
    for item in args.rows:
        label, sep, pattern = item.partition("=")
        if not sep:
            p.error(f"want LABEL=GLOB, got {item!r}")
        phases, line = row(label, pattern, args.split, args.task)
        header = header or phases
        lines.append(line)
    names = [ph if ph != "adapt" else f"adapt {i}" for i, ph in enumerate(header)]
    print("| agent | " + " | ".join(names) + " | gain | seeds |")
    print("|---" * (len(names) + 3) + "|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
