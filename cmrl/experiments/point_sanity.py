"""The point-robot sanity run: every context agent must adapt here, in one to three CPU minutes.

The settings that are the point robot's own (its rewards are minus a distance, about 1 per step,
so they are scaled up; small networks; a smaller entropy start; TD3+BC's weighting; an encoder
taught by a reward decoder on relabelled rows instead of by the critics, reading contexts as runs
of consecutive transitions, its posterior mean fitted to the context by that decoder at meta-test)
live here, apart from the method's defaults. The context settings are
the `relabel-context` variant (`cmrl/variants.py`). `tests/test_adaptation.py` trains pearl and
cmrl with `point_config` and asserts that they adapt; `docs/adaptation.md` has the measured
numbers and the command that reruns them:

    python -m cmrl.experiments.point_sanity --agent pearl --run-dir runs/point-pearl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ..config import RunConfig
from ..variants import variant_fields
from .recipes import DataSpec, ensure_dataset

POINT_DATA = DataSpec(benchmark="point", horizon=20, episodes=100, noise=(0.1, 0.5),
                      random_episodes=100)
"""Per noise level 100 scripted-expert episodes, plus 100 random ones (6,000 transitions; ~3 s)."""

POINT_STEPS = 6000

POINT_FIELDS = {
    "sac.reward_scale": 10.0,
    "sac.init_alpha": 0.1,
    "sac.bc_form": "td3bc",
    "sac.batch_size": 128,
    "net.mlp_hidden": [128, 128],
    "net.latent_dim": 8,
    "sac.kl_weight": 0.001,
    "sac.reward_decoder": 10.0,
    "sac.decoder_relabel": 1.0,
    "sac.encoder_from_critic": False,
    "sac.context_window": 20,
    "sac.z_refine_steps": 200,
}


def point_config(agent: str, dataset: str | Path, steps: int = POINT_STEPS, seed: int = 0,
                 threads: int = 1, extra: dict | None = None) -> RunConfig:
    """The sanity run's config: offline on `dataset` (made from POINT_DATA); `extra` overrides
    fields (screens)."""
    fields = {**variant_fields("relabel-context"), **POINT_FIELDS, **(extra or {}),
              "benchmark.name": "point", "train.agent": agent, "train.mode": "offline",
              "train.offline": str(Path(dataset).resolve()), "train.steps": steps,
              "train.seed": seed, "train.threads": threads, "train.eval_every": 0,
              "train.checkpoint_every": steps}
    return RunConfig().updated(fields).resolved()


def main(argv: list[str] | None = None) -> int:
    from ..algo.trained_agent import load_agent
    from ..algo.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", default="pearl", choices=("pearl", "cmrl"))
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=POINT_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variations", type=int, default=20)
    p.add_argument("--data-episodes", type=int, default=POINT_DATA.episodes,
                   help="expert episodes per noise level in the dataset (random ones scale alike)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help="override a config field, e.g. --set sac.rl_relabel=0.5 (repeatable)")
    args = p.parse_args(argv)
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set wants FIELD=JSON, got {item!r}")
        extra[key.strip()] = json.loads(value)
    scale = args.data_episodes / POINT_DATA.episodes
    data = ensure_dataset(dataclasses.replace(
        POINT_DATA, episodes=args.data_episodes,
        random_episodes=max(1, round(POINT_DATA.random_episodes * scale))))
    start = time.perf_counter()
    Trainer(point_config(args.agent, data, args.steps, args.seed, extra=extra), args.run_dir,
            progress=False).train()
    print(f"trained {args.agent} for {args.steps} steps in {time.perf_counter() - start:.0f} s")
    res = load_agent(args.run_dir).evaluate(("train", "test"), args.variations, seed=0)
    Path(args.run_dir, "eval.json").write_text(json.dumps(res, indent=2))
    for split, part in res["splits"].items():
        for task, r in part["tasks"].items():
            print(split, task, "success by episode", [round(x, 2) for x in r["success_by_episode"]],
                  "return by episode", [round(x, 1) for x in r["return_by_episode"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
