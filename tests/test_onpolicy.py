"""rl2 and maml in the harness: MAML's inner-loop gradients against finite differences, RL2's hidden
state across the episodes of a trial, checkpoints (save, load, resume), the Meta-World adapter, and
each agent learning the point robot to adapt (its evaluation episode above its zero-shot one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmrl.agent_kinds import agent_kind
from cmrl.algo.maml import adapt_params
from cmrl.algo.onpolicy import (OnPolicyAgent, OnPolicyTrainer, evaluate_onpolicy, gae,
                                run_episode, run_trials)
from cmrl.algo.trained_agent import load_agent
from cmrl.config import BenchmarkConfig, ConfigError, RunConfig
from cmrl.envs.metaworld_env import TaskPool
from cmrl.envs.tasks import resolve_benchmark
from cmrl.nets.onpolicy_nets import GaussianMLPPolicy, gaussian_log_prob


def point_config(kind: str, steps: int = 400, **onpolicy) -> RunConfig:
    cfg = RunConfig()
    cfg.benchmark.name = "point"
    cfg.train.agent, cfg.train.steps, cfg.train.threads = kind, steps, 1
    cfg.train.eval_every, cfg.train.checkpoint_every = 0, steps
    cfg.onpolicy.tasks_per_iteration = 4
    cfg.onpolicy.ppo_epochs = 2
    for k, v in onpolicy.items():
        setattr(cfg.onpolicy, k, v)
    cfg.validate()
    return cfg


def point_pool() -> TaskPool:
    return TaskPool(resolve_benchmark(BenchmarkConfig(name="point")))


# -- capabilities and config ---------------------------------------------------------------------
def test_capabilities_and_config_checks():
    rl2, maml = agent_kind("rl2"), agent_kind("maml")
    assert rl2.on_policy and maml.on_policy and not agent_kind("pearl").on_policy
    assert (rl2.adapts_by, maml.adapts_by) == ("hidden_state", "gradient")
    assert not rl2.uses_text and not maml.uses_text and "does not read the goal text" in \
        maml.goal_text_note
    assert "hidden state" in rl2.no_posterior_note and "policy-gradient" in maml.no_posterior_note
    with pytest.raises(ConfigError, match="onpolicy.trial_episodes"):
        RunConfig().updated({"onpolicy.trial_episodes": 0})
    with pytest.raises(ConfigError, match="onpolicy.ppo_lr"):
        RunConfig().updated({"onpolicy.ppo_lr": 0.0})


def test_gae_matches_its_definition():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    g, lam = 0.9, 0.8
    delta = r + g * np.concatenate([v[:, 1:], np.zeros((2, 1))], 1) - v
    want = np.array([[sum((g * lam) ** (k - t) * delta[i, k] for k in range(t, 6))
                      for t in range(6)] for i in range(2)])
    np.testing.assert_allclose(gae(r, v, g, lam), want, rtol=1e-12)


# -- MAML's inner loop against finite differences -------------------------------------------------
def _tiny_maml_problem():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, [3], init_std=0.7).double()
    g = torch.Generator().manual_seed(1)
    pre = [torch.randn(12, 2, generator=g, dtype=torch.float64) for _ in range(2)]
    pre_adv = torch.randn(12, generator=g, dtype=torch.float64)
    post = [torch.randn(10, 2, generator=g, dtype=torch.float64) for _ in range(2)]
    post_adv = torch.randn(10, generator=g, dtype=torch.float64)
    names = [k for k, _ in policy.named_parameters()]

    def outer(params: dict, create_graph: bool, inner_lr: float = 0.3, steps: int = 2):
        adapted = adapt_params(policy, params, pre[0], pre[1], pre_adv, inner_lr, steps,
                               create_graph)
        mean, log_std = policy.forward_with(adapted, post[0])
        return -(gaussian_log_prob(mean, log_std, post[1]) * post_adv).mean()

    return policy, names, outer, pre, pre_adv


def _finite_difference(f, params: dict, eps: float = 1e-6) -> dict:
    out = {}
    for k, p in params.items():
        grad = torch.zeros_like(p)
        for i in range(p.numel()):
            plus = {kk: vv.detach().clone().requires_grad_() for kk, vv in params.items()}
            minus = {kk: vv.detach().clone().requires_grad_() for kk, vv in params.items()}
            with torch.no_grad():
                plus[k].view(-1)[i] += eps
                minus[k].view(-1)[i] -= eps
            grad.view(-1)[i] = (float(f(plus)) - float(f(minus))) / (2 * eps)
        out[k] = grad
    return out


def test_maml_inner_step_is_a_policy_gradient_step():
    policy, names, _, pre, pre_adv = _tiny_maml_problem()
    params = {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}

    def inner_loss(p):
        mean, log_std = policy.forward_with(p, pre[0])
        return -(gaussian_log_prob(mean, log_std, pre[1]) * pre_adv).mean()

    fd = _finite_difference(inner_loss, params)
    adapted = adapt_params(policy, params, pre[0], pre[1], pre_adv, 0.3, 1, create_graph=False)
    for k in names:
        torch.testing.assert_close(adapted[k], params[k] - 0.3 * fd[k], rtol=1e-6, atol=1e-8)


def test_maml_outer_gradient_through_two_inner_steps_matches_finite_differences():
    policy, names, outer, *_ = _tiny_maml_problem()
    params = {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}
    auto = torch.autograd.grad(outer(params, create_graph=True), list(params.values()))
    fd = _finite_difference(lambda p: outer(p, create_graph=False), params)
    for k, a in zip(names, auto):
        torch.testing.assert_close(a, fd[k], rtol=1e-5, atol=1e-7)
    # first-order MAML drops the second-order terms: it is not the true gradient here
    first = torch.autograd.grad(outer(params, create_graph=False), list(params.values()))
    gap = max(float((a - b).abs().max()) for a, b in zip(first, auto))
    assert gap > 1e-3


# -- RL2's hidden state ---------------------------------------------------------------------------
def test_rl2_hidden_state_carries_across_episodes_and_resets_across_trials():
    torch.manual_seed(0)
    agent = OnPolicyAgent(point_config("rl2"), 2, 2, ("point-robot",)).eval()
    pool = point_pool()
    goals = pool.variations("point-robot", "test")[:3]
    envs = [pool.make_env("point-robot", "test") for _ in goals]
    trial = agent.trial(3)
    assert not trial.h.any()  # a trial starts from zeros
    first = run_episode(envs, goals, trial, True, [0] * 3)
    carried = trial.hidden.copy()
    assert np.abs(carried).sum() > 0
    second = run_episode(envs, goals, trial, True, [0] * 3)
    # same obs, same (deterministic) policy: only the carried hidden state and the previous
    # step's inputs can make the second episode act differently from the first
    assert not np.allclose(first.actions, second.actions)
    fresh = agent.trial(3)
    again = run_episode(envs, goals, fresh, True, [0] * 3)
    np.testing.assert_allclose(again.actions, first.actions, rtol=1e-6)  # reset across trials
    # the rewards a trial has seen change what it does next
    a, b = agent.trial(1), agent.trial(1)
    obs = np.zeros((1, 2), np.float32)
    for _ in range(5):
        a.act(obs, True), b.act(obs, True)
        a.observe(np.zeros((1, 2)), np.array([-1.0]), np.array([False]))
        b.observe(np.zeros((1, 2)), np.array([-0.2]), np.array([False]))
    assert not np.allclose(a.act(obs, True).action, b.act(obs, True).action)
    # step-by-step acting equals the full-trial forward pass that PPO trains with
    x = np.concatenate([first.extras["x"], second.extras["x"]], 1)
    with torch.no_grad():
        mean, value, _, _ = agent.policy(torch.as_tensor(x))
    np.testing.assert_allclose(mean.numpy(), np.concatenate([first.actions, second.actions], 1),
                               rtol=1e-4, atol=1e-5)


def test_evaluator_runs_rl2_as_one_trial_after_a_separate_zero_shot_trial():
    torch.manual_seed(0)
    agent = OnPolicyAgent(point_config("rl2"), 2, 2, ("point-robot",)).eval()
    made = []
    original = agent.trial

    def spy(n, generators=None):
        made.append(original(n, generators))
        return made[-1]

    agent.trial = spy
    phases = ["zero-shot", "adapt", "adapt", "eval"]
    succ, ret = run_trials(agent, point_pool(), "point-robot", "test", 3, phases, seed=0)
    assert succ.shape == ret.shape == (3, 4)
    horizon = 20
    # the protocol's trial (made first) steps through adapt, adapt, eval; the zero-shot one alone
    assert [len(t.activity) for t in made] == [3 * horizon, horizon]


# -- checkpoints, resume, evaluator JSON ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["rl2", "maml"])
def test_checkpoint_round_trip_and_exact_resume(tmp_path, kind):
    straight = OnPolicyTrainer(point_config(kind, steps=2 * _iteration_steps(kind)),
                               tmp_path / "a", progress=False)
    straight.train()
    half = point_config(kind, steps=_iteration_steps(kind))
    half.train.checkpoint_every = _iteration_steps(kind)
    OnPolicyTrainer(half, tmp_path / "b", progress=False).train()
    from cmrl.algo.trainer import config_for_resume

    cfg = config_for_resume(tmp_path / "b", {"train.steps": 2 * _iteration_steps(kind)})
    OnPolicyTrainer(cfg, tmp_path / "b", resume=True, progress=False).train()
    a, b = load_agent(tmp_path / "a"), load_agent(tmp_path / "b")
    assert a.kind == kind and a.adapts_by == agent_kind(kind).adapts_by
    for (k, va), (_, vb) in zip(a.agent.state_dict().items(), b.agent.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k)  # resumed == uninterrupted
    for k, v in straight.agent.state_dict().items():
        torch.testing.assert_close(a.agent.state_dict()[k], v)
    res = a.evaluate(("test",), num_variations=2, adaptation_episodes=2)
    t = res["splits"]["test"]["tasks"]["point-robot"]
    assert t["episode_phases"] == ["zero-shot", "adapt", "adapt", "eval"]
    assert len(t["success_by_episode"]) == len(t["return_by_episode"]) == 4
    assert res["agent"] == kind and res["checkpoint"]["env_steps"] == 2 * _iteration_steps(kind)
    json.dumps(res)
    steps = list(a.rollout("point-robot", variation=1, adaptation_episodes=1, eval_episodes=1))
    assert [s.phase for s in steps] == ["adapt"] * 20 + ["eval"] * 20
    assert steps[-1].routing is None and len(steps[-1].z_mean) == 0


def _iteration_steps(kind: str) -> int:
    cfg = point_config(kind).onpolicy
    per_task = cfg.trial_episodes if kind == "rl2" else cfg.adapt_episodes + cfg.post_episodes
    return cfg.tasks_per_iteration * per_task * 20


def test_model_file_of_another_architecture_is_refused(tmp_path):
    from cmrl.runs.checkpoint import CheckpointError

    OnPolicyTrainer(point_config("maml", steps=_iteration_steps("maml")), tmp_path / "r",
                    progress=False).train()
    info = json.loads((tmp_path / "r" / "config.json").read_text())
    info["config"]["onpolicy"]["policy_hidden"] = [7]
    (tmp_path / "r" / "config.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="do not match|shape"):
        load_agent(tmp_path / "r")


def test_a_finished_run_trains_on_from_its_weights_and_other_shapes_are_refused(tmp_path):
    from cmrl.runs.checkpoint import CheckpointError

    n = _iteration_steps("rl2")
    OnPolicyTrainer(point_config("rl2", steps=n), tmp_path / "a", progress=False).train()
    src = load_agent(tmp_path / "a").agent.state_dict()
    cfg = point_config("rl2", steps=n)
    cfg.train.init_from, cfg.train.seed = str(tmp_path / "a"), 5
    more = OnPolicyTrainer(cfg, tmp_path / "b", progress=False)
    for k, v in more.agent.state_dict().items():
        torch.testing.assert_close(v, src[k], msg=k)  # starts where "a" stopped
    more.train()
    moved = [k for k, v in load_agent(tmp_path / "b").agent.state_dict().items()
             if not torch.equal(v, src[k])]
    assert moved and more.env_steps == n
    a_info, b_info = load_agent(tmp_path / "a").info, load_agent(tmp_path / "b").info
    assert "trained_before" not in a_info
    assert b_info["trained_before"] == {"init_from": str(tmp_path / "a"), "env_steps": n,
                                        "grad_steps": a_info["grad_steps"]}
    again = point_config("rl2", steps=n)
    again.train.init_from = str(tmp_path / "b")
    OnPolicyTrainer(again, tmp_path / "b2", progress=False).train()
    assert load_agent(tmp_path / "b2").info["trained_before"]["env_steps"] == 2 * n  # chained
    other = point_config("rl2", steps=n, rl2_hidden=16)
    other.train.init_from = str(tmp_path / "a")
    with pytest.raises(CheckpointError, match="do not fit"):
        OnPolicyTrainer(other, tmp_path / "c", progress=False)
    maml = point_config("maml", steps=n)
    maml.train.init_from = str(tmp_path / "a")
    with pytest.raises(CheckpointError, match="cannot initialise"):
        OnPolicyTrainer(maml, tmp_path / "d", progress=False)


# -- Meta-World's own evaluator -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rl2", "maml"])
def test_metaworld_evaluator_runs_them(kind):
    from cmrl.algo.metaworld_adapter import metaworld_protocol
    from cmrl.algo.onpolicy_agent import TrainedOnPolicyAgent

    cfg = RunConfig()
    cfg.benchmark.name, cfg.benchmark.horizon, cfg.train.agent = "ml1:reach-v3", 15, kind
    agent = OnPolicyAgent(cfg, 39, 4, ("reach-v3",)).eval()
    trained = TrainedOnPolicyAgent(agent, {}, None)
    seen = []
    mw_agent = trained.as_metaworld_agent()
    original = mw_agent.after_eval_step
    mw_agent.after_eval_step = lambda r, e: (seen.append(np.asarray(r).copy()), original(r, e))
    trained.as_metaworld_agent = lambda **_: mw_agent
    res = metaworld_protocol(trained, ("test",), num_evals=1, adaptation_episodes=1)
    assert 0.0 <= res["splits"]["test"]["mean_success"] <= 1.0
    assert len(seen) >= 15 and any(np.any(r != 0) for r in seen)  # rewards reach the agent
    assert mw_agent.trial is not None
    if kind == "maml":
        assert mw_agent.trial.adapted is not None and mw_agent.trial.action_change > 0


# -- the app's Adapt tab: what they show instead of a posterior -----------------------------------
@pytest.mark.parametrize("kind", ["rl2", "maml"])
def test_adapt_view_shows_the_adaptation_signal(kind):
    from app.adapt import Event, Rollout, View
    from cmrl.algo.onpolicy_agent import TrainedOnPolicyAgent

    torch.manual_seed(0)
    trained = TrainedOnPolicyAgent(OnPolicyAgent(point_config(kind), 2, 2, ("point-robot",)).eval(),
                                   {}, None)
    view = View(trained, Rollout("point-robot", "reach the hidden goal", 0, episodes=1))
    records = list(trained.rollout("point-robot", variation=2, adaptation_episodes=1,
                                   eval_episodes=1))
    for rec in records:
        view.add(Event("", "step", record=rec))
    signal = {e: np.mean(v) for e, v in view.adaptation.items()}
    if kind == "rl2":
        assert signal[0] > 0 and signal[1] > 0  # the memory moves in every episode
    else:
        assert signal[0] == 0 and signal[1] > 0  # nothing before the inner step, then a change
    fig = json.loads(view.posterior().plot)
    assert fig["data"][0]["type"] == "bar" and len(fig["data"][0]["x"]) == 2
    assert ("hidden-state" if kind == "rl2" else "action change") in fig["layout"]["title"]["text"]


# -- learning to adapt on the point robot ---------------------------------------------------------
class _Goals:
    """A task pool offering given goal variations of the point robot (both splits)."""

    def __init__(self, goals):
        self.goals = goals

    def variations(self, task, split=None, fresh=False):
        return self.goals

    def make_env(self, task, split=None):
        from cmrl.envs.point_robot import PointEnv

        return PointEnv()


def _returns(agent, pool, phases, variations):
    agent.eval()
    with torch.no_grad():
        succ, ret = run_trials(agent, pool, "point-robot", "test", variations, phases, seed=3)
    return succ.mean(0), ret.mean(0)


def test_maml_learns_to_adapt_on_the_point_robot(tmp_path):
    """Meta-training must make the adapted policy better than both its own zero-shot episode and
    what one inner step does from the untrained weights (an inner step alone already helps)."""
    torch.manual_seed(0)
    cfg = point_config("maml", steps=6 * 1200, tasks_per_iteration=10, ppo_epochs=10,
                       ppo_lr=1e-3)
    trainer = OnPolicyTrainer(cfg, tmp_path / "maml", progress=False)
    pool, phases = point_pool(), ["zero-shot", "adapt", "adapt", "adapt", "eval"]
    _, before = _returns(trainer.agent, pool, phases, 20)
    trainer.train()
    succ, after = _returns(trainer.agent, pool, phases, 20)
    assert after[-1] > after[0] + 1.0, (before, after)        # adapted above zero-shot
    assert after[-1] > before[-1] + 1.5, (before, after)      # and learned, not just one PG step
    assert succ[-1] > succ[0]


def test_rl2_learns_to_adapt_on_a_two_goal_point_robot(tmp_path):
    """The point robot with two hidden goals (up-left, up-right): the trial's second episode,
    carrying the hidden state, must beat a fresh trial's first (zero-shot) episode."""
    from cmrl.envs.point_robot import TASK, PointGoal

    torch.manual_seed(0)
    goals = [PointGoal(TASK, 0, (0.7071, 0.7071)), PointGoal(TASK, 1, (-0.7071, 0.7071))]
    cfg = point_config("rl2", steps=47 * 640, trial_episodes=2, tasks_per_iteration=16,
                       ppo_epochs=4, ppo_minibatches=2, ppo_lr=3e-3, rl2_hidden=64, rl2_embed=32,
                       init_std=0.5, ppo_reward_scale=1.0)
    trainer = OnPolicyTrainer(cfg, tmp_path / "rl2", progress=False,
                              goal_variations={TASK: goals})
    pool, phases = _Goals(goals), ["zero-shot", "adapt", "eval"]
    _, before = _returns(trainer.agent, pool, phases, 2)
    trainer.train()
    succ, after = _returns(trainer.agent, pool, phases, 2)
    assert after[-1] > after[0] + 0.5, (before, after)        # the carried hidden state helps
    assert after[-1] > before[-1] + 3.0, (before, after)
    assert succ[-1] >= succ[0] and succ[-1] > 0
