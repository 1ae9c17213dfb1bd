"""How precisely must a context locate a hidden goal? A diagnostic for ML1 tasks (issue 25).

A plain MLP policy is behaviour-cloned from a dataset's scripted-expert episodes with the *true*
goal written into the observation (where Meta-World keeps it when the goal is not hidden), then run
on fresh meta-train goal variations with that goal given exactly, or moved by a random offset of a
fixed length: the error a context's z would carry. Success against offset length says how close a
posterior must place the goal for the policy to reach it, and whether the data can teach a policy
to reach at all. No held-out goal is used.

    python scripts/reach_goal_oracle.py data/ml1-reach-expert-v3 --steps 4000 --offsets 0,0.03,0.05,0.08
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from cmrl.config import BenchmarkConfig
from cmrl.data import load_dataset
from cmrl.envs.metaworld_env import GOAL_SLICE, TaskPool
from cmrl.envs.tasks import resolve_benchmark


def expert_rows(d) -> tuple[np.ndarray, np.ndarray]:
    """(observations with their episode's goal filled in, actions) of the expert episodes."""
    expert_eps = np.flatnonzero(~np.isnan(d.noise))
    keep = np.isin(d.episode_ids, expert_eps)
    obs = d.obs[keep].copy()
    obs[:, GOAL_SLICE] = d.goals[d.episode_ids[keep]]
    return obs, d.actions[keep]


def train_policy(obs, actions, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    mean, std = obs.mean(0), obs.std(0) + 1e-6
    net = nn.Sequential(nn.Linear(obs.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, actions.shape[1]), nn.Tanh())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.as_tensor((obs - mean) / std)
    y = torch.as_tensor(actions).clamp(-1, 1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (256,), generator=gen)
        loss = ((net(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    net.norm = (mean, std)
    return net


def run_episodes(net, pool, task, variations, offset: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    env = pool.make_env(task, "train")
    mean, std = net.norm
    successes, returns = [], []
    for v in variations:
        obs = env.reset(v, seed=seed)
        direction = rng.normal(size=3)
        given = env.goal + offset * direction / np.linalg.norm(direction)
        ret, success, done = 0.0, False, False
        while not done:
            full = obs.copy()
            full[GOAL_SLICE] = given
            with torch.no_grad():
                act = net(torch.as_tensor((full - mean) / std, dtype=torch.float32)).numpy()
            obs, r, s, done = env.step(act)
            ret += r
            success |= s
        successes.append(success)
        returns.append(ret)
    env.close()
    return float(np.mean(successes)), float(np.mean(returns))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variations", type=int, default=20)
    p.add_argument("--offsets", default="0,0.03,0.05,0.08", help="metres, comma-separated")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(1)
    data, manifest = load_dataset(args.dataset)
    bench = resolve_benchmark(BenchmarkConfig(**manifest["benchmark"]))
    pool = TaskPool(bench)
    out = {"dataset": args.dataset, "steps": args.steps, "seed": args.seed, "tasks": {}}
    for task, d in data.items():
        obs, actions = expert_rows(d)
        start = time.perf_counter()
        net = train_policy(obs, actions, args.steps, args.seed)
        trained = time.perf_counter() - start
        fresh = pool.variations(task, "train", fresh=True)[:args.variations]
        rows = {}
        for off in (float(x) for x in args.offsets.split(",")):
            rows[off] = run_episodes(net, pool, task, fresh, off, args.seed)
            print(f"{task}: goal given {off * 100:.0f} cm off -> success {rows[off][0]:.2f}, "
                  f"return {rows[off][1]:.0f} ({len(fresh)} fresh meta-train goals, "
                  f"{len(obs)} expert rows, {args.steps} BC steps in {trained:.0f} s)", flush=True)
        out["tasks"][task] = {str(k): {"success": s, "return": r} for k, (s, r) in rows.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
