"""Does the context find the goal? The evaluation episode of an agent that adapts, with its
posterior computed from different contexts of the same goal variation:

- `own`: its own adaptation episodes (z drawn from the posterior so far, per episode: the protocol),
- `expert`: one scripted-expert episode (action noise 0.1; what offline training mostly saw),
- `random`: one uniform-random-policy episode,
- `prior`: no context at all (the zero-shot episode).

If `expert` succeeds where `own` fails, the encoder reads the behaviour rather than the rewards
(context distribution shift); if `expert` fails too, the policy or the encoder never learned to use
z. For each context the report also says whether z separates goals: how often a posterior mean is
nearest to the expert-context posterior of its own variation among all evaluated variations
(`goal_id_accuracy`, chance = 1 / variations), and the mean distance to its own variation's expert
posterior against the others'. A linear probe z -> goal position, fitted on meta-train variations'
posteriors (expert contexts and the agent's own adaptation episodes), reports how well each
context's z locates the goal on fresh ones.
"""

from __future__ import annotations


import numpy as np
import torch

from ..algo.agent import TaskBelief
from ..algo.trained_agent import TrainedAgent
from ..envs.experts import run_episode, scripted_policy
from ..envs.tasks import canonical_goal_text
from ..nets.goal_text import embed_goals
from ..runs.goal_probe import apply_goal_probe, fit_goal_probe

CONTEXTS = ("own", "expert", "random", "prior")


def _goal_vectors(agent: TrainedAgent, task: str, E: int) -> np.ndarray | None:
    if not agent.uses_text:
        return None
    vec = embed_goals(agent.text_encoder, canonical_goal_text(task), agent.config.net.goal_encoding)
    return np.repeat(vec[None], E, axis=0)


def _eval_episode(belief: TaskBelief, envs, variations, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic episode per env at the posterior mean: (success [E], return [E])."""
    belief.sample_z(deterministic=True)
    obs = np.stack([env.reset(v, seed=seed) for env, v in zip(envs, variations)])
    E = len(envs)
    succ, ret, done = np.zeros(E, bool), np.zeros(E), False
    while not done:
        actions = belief.act(obs, deterministic=True).action.cpu().numpy()
        steps = [env.step(a) for env, a in zip(envs, actions)]
        obs = np.stack([s[0] for s in steps])
        ret += [s[1] for s in steps]
        succ |= np.array([s[2] for s in steps])
        done = steps[0][3]
    return succ, ret


def _own_adaptation(belief: TaskBelief, envs, variations, episodes: int, seed: int) -> None:
    """The protocol's adaptation episodes: z drawn from the posterior so far, stochastic actions,
    every transition observed."""
    for ep in range(episodes):
        belief.sample_z()
        obs = np.stack([env.reset(v, seed=seed + ep) for env, v in zip(envs, variations)])
        done = False
        while not done:
            actions = belief.act(obs).action.cpu().numpy()
            steps = [env.step(a) for env, a in zip(envs, actions)]
            nxt = np.stack([s[0] for s in steps])
            belief.observe(obs, actions, np.array([s[1] for s in steps], np.float32), nxt)
            obs, done = nxt, steps[0][3]


def diagnose_task(agent: TrainedAgent, task: str, split: str, num_variations: int = 10,
                  adaptation_episodes: int = 3, seed: int = 0) -> dict:
    """The four contexts on `num_variations` variations of one task (fresh ones for meta-train)."""
    if not agent.uses_context:
        raise ValueError(f"a {agent.kind} agent has no context to diagnose")
    pool = agent.task_pool()
    variations = pool.variations(task, split, fresh=split == "train")
    rng = np.random.default_rng(seed)
    chosen = [variations[i] for i in rng.permutation(len(variations))[:num_variations]]
    E = len(chosen)
    envs = [pool.make_env(task, split) for _ in range(E)]
    goal_vecs = _goal_vectors(agent, task, E)
    gen = torch.Generator(device=agent.agent.device).manual_seed(seed)
    out: dict = {"task": task, "split": split, "variations": E}
    try:
        goals = []
        for env, v in zip(envs, chosen):
            env.reset(v)
            goals.append(np.asarray(env.goal, np.float64))
        out["goals"] = np.stack(goals).tolist()
        posteriors = {}
        for ctx in CONTEXTS:
            belief = TaskBelief(agent.agent, E, goal=goal_vecs, task_ids=[-1] * E, generator=gen)
            if ctx == "own":
                _own_adaptation(belief, envs, chosen, adaptation_episodes, seed * 1000)
            elif ctx in ("expert", "random"):
                policy = scripted_policy(task) if ctx == "expert" else None
                for e, (env, v) in enumerate(zip(envs, chosen)):
                    ep = run_episode(env, v, policy, 0.1 if policy else 0.0,
                                     np.random.default_rng([seed, e]), ctx)
                    mask = np.zeros(E, bool)
                    mask[e] = True
                    for t in range(len(ep)):
                        row = lambda x: np.repeat(x[t][None], E, axis=0)  # noqa: E731
                        belief.observe(row(ep.obs), row(ep.actions), np.full(E, ep.rewards[t]),
                                       row(ep.next_obs), env_mask=mask)
            mu, std = belief.posterior_numpy()
            succ, ret = _eval_episode(belief, envs, chosen, seed * 1000 + 777)
            posteriors[ctx] = mu
            out[ctx] = {"success": float(succ.mean()), "return": float(ret.mean()),
                        "z_std": float(std.mean()), "z_mean": mu.tolist()}
        ref = posteriors["expert"]
        for ctx in CONTEXTS:
            d = np.linalg.norm(posteriors[ctx][:, None] - ref[None], axis=-1)  # [E, E]
            own_d = np.diag(d)
            other = d[~np.eye(E, dtype=bool)].reshape(E, E - 1) if E > 1 else np.zeros((E, 0))
            out[ctx]["goal_id_accuracy"] = float(np.mean(d.argmin(1) == np.arange(E)))
            out[ctx]["dist_own_goal"] = float(own_d.mean())
            out[ctx]["dist_other_goals"] = float(other.mean()) if other.size else None
    finally:
        for env in envs:
            env.close()
    return out


def probe_error(weights: np.ndarray, z: np.ndarray, goals: np.ndarray) -> float:
    """Mean distance between the probe's goal and the true one."""
    return float(np.linalg.norm(apply_goal_probe(weights, z) - goals, axis=-1).mean())


def diagnose(agent: TrainedAgent, tasks: list[str] | None = None, num_variations: int = 10,
             adaptation_episodes: int = 3, seed: int = 0,
             splits: tuple[str, ...] = ("train", "test")) -> dict:
    """Every (task, split) of the agent's benchmark (or `tasks`, `splits`), plus the goal probe: fitted on
    posteriors of the meta-train tasks' training variations (expert contexts and the agent's own
    adaptation episodes), scored on each context of the evaluated (fresh or held-out) variations."""
    pool = agent.task_pool()
    bench = pool.benchmark
    report: dict = {"agent": agent.kind, "run_dir": str(agent.run_dir), "seed": seed,
                    "adaptation_episodes": adaptation_episodes, "contexts": list(CONTEXTS),
                    "tasks": []}
    for split in splits:
        for task in bench.tasks(split):
            if tasks and task not in tasks:
                continue
            report["tasks"].append(diagnose_task(agent, task, split, num_variations,
                                                 adaptation_episodes, seed))
    # The probe: fitted on training variations, from expert contexts and from the agent's own
    # adaptation episodes (the posteriors the app draws a belief from, episode by episode).
    fit_z, fit_goals = [], []
    for task in bench.train_tasks:
        if tasks and task not in tasks:
            continue
        # at least 3 variations per probe weight, so a probe on a wide z is not fitted by chance
        n_fit = max(num_variations, 3 * (agent.config.net.latent_dim + 1))
        fit = _training_variation_posteriors(agent, task, n_fit, adaptation_episodes, seed + 1)
        fit_z.append(fit[0])
        fit_goals.append(fit[1])
    if fit_z:
        w = fit_goal_probe(np.concatenate(fit_z), np.concatenate(fit_goals))
        report["goal_probe"] = {"weights": w.tolist(), "fitted_on": "expert contexts and the "
                                "agent's own adaptation episodes on training variations of the "
                                "meta-train tasks"}
        for part in report["tasks"]:
            goals = np.asarray(part["goals"])
            if goals.shape[1] != w.shape[1]:
                continue
            for ctx in CONTEXTS:
                part[ctx]["probe_error"] = probe_error(w, np.asarray(part[ctx]["z_mean"]), goals)
    return report


def _training_variation_posteriors(agent: TrainedAgent, task: str, n: int, episodes: int,
                                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means on n training variations (from one scripted-expert episode, then after each
    of the agent's own `episodes` adaptation episodes) and the goals they belong to."""
    pool = agent.task_pool()
    variations = pool.variations(task, "train")
    rng = np.random.default_rng(seed)
    picks = [variations[i] for i in rng.permutation(len(variations))[:n]]
    envs = [pool.make_env(task, "train") for _ in picks]
    zs, goals = [], []
    try:
        for k, (env, v) in enumerate(zip(envs, picks)):
            ep = run_episode(env, v, scripted_policy(task), 0.1, np.random.default_rng([seed, k]),
                             "expert")
            belief = TaskBelief(agent.agent, 1, goal=_goal_vectors(agent, task, 1), task_ids=[-1])
            for t in range(len(ep)):
                belief.observe(ep.obs[t][None], ep.actions[t][None], ep.rewards[t:t + 1],
                               ep.next_obs[t][None])
            zs.append(belief.posterior_numpy()[0])
            goals.append(np.asarray(env.goal, np.float64)[None])
        gen = torch.Generator(device=agent.agent.device).manual_seed(seed)
        belief = TaskBelief(agent.agent, len(picks), goal=_goal_vectors(agent, task, len(picks)),
                            task_ids=[-1] * len(picks), generator=gen)
        own_goals = np.stack([np.asarray(env.goal, np.float64) for env in envs])
        for ep in range(episodes):
            _own_adaptation(belief, envs, picks, 1, seed * 1000 + ep)
            zs.append(belief.posterior_numpy()[0])
            goals.append(own_goals)
    finally:
        for env in envs:
            env.close()
    return np.concatenate(zs), np.concatenate(goals)


def markdown(report: dict) -> str:
    """A task x context table: eval success / return, goal-id accuracy, probe error."""
    lines = ["| task | split | context | success | return | goal id acc. | dist own / others | "
             "probe error |", "|---|---|---|---|---|---|---|---|"]
    for part in report["tasks"]:
        for ctx in CONTEXTS:
            r = part[ctx]
            others = r["dist_other_goals"]
            lines.append(
                f"| {part['task']} | {part['split']} | {ctx} | {r['success']:.2f} | "
                f"{r['return']:.1f} | {r['goal_id_accuracy']:.2f} | {r['dist_own_goal']:.2f} / "
                f"{'-' if others is None else f'{others:.2f}'} | "
                f"{r.get('probe_error', float('nan')):.3f} |")
    return "\n".join(lines)
