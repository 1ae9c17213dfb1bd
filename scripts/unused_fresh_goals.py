"""The evaluator's protocol on the fresh meta-train goals that `--variations 30` leaves out.

`cmrl eval --split train --variations N --seed 0` takes the first N of one seeded draw of a task's
fresh goals; ML1 reach rounds chose on the first 30 (docs/adaptation.md), so the draw's goals 30-49
never chose anything. This runs zero-shot, 3 adaptation episodes and an evaluation episode (seed 0)
on those, stepped as one batch, and writes success and return by episode:

    PYTHONPATH=. python scripts/unused_fresh_goals.py checkpoints/ml1/reach-v3/cmrl out.json
"""

from __future__ import annotations

import argparse
import json
import time

import cmrl.algo.evaluation as evaluation
from cmrl import load_agent
from cmrl.algo.speed_tuning import torch_threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--task", default="reach-v3")
    p.add_argument("--skip", type=int, default=30, help="goals of the draw already used")
    p.add_argument("--draw", type=int, default=50, help="goals in the draw")
    args = p.parse_args()
    start = time.perf_counter()
    trained = load_agent(args.checkpoint)
    pool = trained.task_pool()
    draw = evaluation.chosen_variations(pool, args.task, "train", args.draw, 0)[args.skip:]
    _, goal = evaluation.task_goal(trained.agent, args.task, trained.text_encoder)
    phases = evaluation.episode_phases(3, 1, True)
    with torch_threads(1):
        succ, ret = evaluation.run_variations(trained.agent, pool, args.task, "train", goal,
                                              len(draw), phases, 0, variations=draw)
    res = {"checkpoint": args.checkpoint, "goals": f"{args.skip}-{args.draw - 1} of the seed-0 draw",
           "phases": phases, "success_by_episode": succ.mean(0).tolist(),
           "return_by_episode": ret.mean(0).tolist(), "wall_s": time.perf_counter() - start}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(args.checkpoint, [round(x, 2) for x in res["success_by_episode"]])


if __name__ == "__main__":
    main()
