"""Does a point-robot agent read off-target paths? (docs/adaptation.md, tenth round)

For 30 goals theta on the arc and 7 path angles phi, the context is one noisy scripted-expert path
from the origin toward the point at angle phi (radius 0.85), its rewards recomputed for theta; with
`--paths 2` a second path toward the mirrored angle 180 - phi follows. Printed per phi: the
evaluation episode's success (z at the posterior mean), the median angle between the goal and
where the episode ends, and, for encoders with a reward decoder, the median angle between the goal
and the arc point the decoder predicts the highest reward for (the goal the encoder believes).
With `--episodes`, instead: the agent's own adaptation episodes on 8 goals, as the evaluator runs
them (z from the prior, then from the posterior so far; the last one deterministic), and the angle
at which each ends.

    python scripts/point_context_probe.py RUN_DIR [--episodes]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cmrl.algo.agent import TaskBelief
from cmrl.algo.trained_agent import load_agent
from cmrl.envs.experts import run_episode, scripted_policy
from cmrl.envs.point_robot import TASK, PointEnv, PointGoal, relabel_rewards
from cmrl.experiments.context_diagnosis import _eval_episode, _goal_vectors


def decoder_belief(agent, mu: torch.Tensor) -> np.ndarray | None:
    """Per env, the arc angle whose point the reward decoder scores highest (None without one)."""
    enc = agent.agent.encoder
    if enc.reward_net is None:
        return None
    ang = np.linspace(0, np.pi, 181)
    arc = torch.tensor(np.stack([np.cos(ang), np.sin(ang)], -1), dtype=torch.float32)
    E = len(mu)
    pts = arc[None].expand(E, -1, -1)
    with torch.no_grad():
        r = enc.predict_reward(pts, torch.zeros(E, len(ang), 2), pts, mu[:, None].expand(-1, len(ang), -1))
    return ang[r.argmax(1).cpu().numpy()]


def own_episodes(agent, seed: int = 3, episodes: int = 4) -> None:
    thetas = np.random.default_rng(seed).uniform(0, np.pi, 8)
    E = len(thetas)
    envs = [PointEnv() for _ in thetas]
    goals = [PointGoal(TASK, i, (float(np.cos(t)), float(np.sin(t)))) for i, t in enumerate(thetas)]
    torch.manual_seed(0)
    belief = TaskBelief(agent.agent, E, goal=_goal_vectors(agent, TASK, E), task_ids=[-1] * E)
    print("goal angles      ", np.degrees(thetas).round().astype(int))
    for ep in range(episodes):
        last = ep == episodes - 1
        belief.sample_z(deterministic=last)
        obs = np.stack([env.reset(g) for env, g in zip(envs, goals)])
        for _ in range(20):
            action = belief.act(obs, deterministic=last).action.cpu().numpy()
            steps = [env.step(a) for env, a in zip(envs, action)]
            nxt = np.stack([s[0] for s in steps])
            if not last:
                belief.observe(obs, action, np.array([s[1] for s in steps], np.float32), nxt)
            obs = nxt
        label = "evaluation" if last else f"adaptation {ep + 1}"
        print(f"{label:<17}", np.degrees(np.arctan2(obs[:, 1], obs[:, 0])).round().astype(int))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--goals", type=int, default=30)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--episodes", action="store_true", help="the agent's own adaptation episodes")
    args = p.parse_args()
    agent = load_agent(args.run_dir)
    if args.episodes:
        own_episodes(agent)
        return
    thetas = np.random.default_rng(args.seed).uniform(0, np.pi, args.goals)
    E = len(thetas)
    envs = [PointEnv() for _ in range(E)]
    goals = [PointGoal(TASK, i, (float(np.cos(t)), float(np.sin(t)))) for i, t in enumerate(thetas)]
    goal_vecs = _goal_vectors(agent, TASK, E)
    print("paths  phi  success  end-error  belief-error (degrees, medians)")
    for paths in (1, 2):
        for phi in np.linspace(0, np.pi, 7):
            belief = TaskBelief(agent.agent, E, goal=goal_vecs, task_ids=[-1] * E)
            for k in range(paths):
                a = phi if k == 0 else np.pi - phi
                target = PointGoal(TASK, 0, (0.85 * float(np.cos(a)), 0.85 * float(np.sin(a))))
                ep = run_episode(envs[0], target, scripted_policy(TASK), 0.1,
                                 np.random.default_rng(k), "probe")
                for t in range(len(ep)):
                    r = np.array([relabel_rewards(ep.next_obs[t], np.array(g.goal)) for g in goals],
                                 np.float32)
                    row = lambda x: np.repeat(x[t][None], E, axis=0)  # noqa: E731
                    belief.observe(row(ep.obs), row(ep.actions), r, row(ep.next_obs))
            mu, _ = belief.infer_posterior()
            believed = decoder_belief(agent, mu)
            succ, _ = _eval_episode(belief, envs, goals, 0)
            ends = np.stack([env.pos for env in envs])
            end_err = np.degrees(np.abs(np.arctan2(ends[:, 1], ends[:, 0]) - thetas))
            b_err = (f"{np.median(np.degrees(np.abs(believed - thetas))):5.1f}"
                     if believed is not None else "    -")
            print(f"{paths:5d} {np.degrees(phi):4.0f} {succ.mean():8.2f} {np.median(end_err):10.1f} "
                  f"{b_err:>13}")


if __name__ == "__main__":
    main()
