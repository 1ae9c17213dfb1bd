"""The CARE baseline (`--agent care`): the mixture encoder's numerics and gradient flow, the agent's
capabilities, and care through offline training, loading, both evaluators, rollouts, routing
analysis and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cmrl
from cmrl.algo.agent import MetaAgent, TaskBelief
from cmrl.agent_kinds import KINDS, agent_kind
from cmrl.config import AGENT_KINDS, BenchmarkConfig, ConfigError
from cmrl.data import generate_dataset
from cmrl.nets.mixture_encoder import MixtureEncoder
from cmrl.experiments.routing_analysis import NoRoutingError, task_routing
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config
from tests.test_end_to_end import tiny

TEXT_DIM = 384


def _care(seed: int = 0) -> MetaAgent:
    torch.manual_seed(seed)
    return MetaAgent(tiny_config("care"), OBS_DIM, ACT_DIM, TEXT_DIM, ML4_TRAIN)


# -- the mixture encoder ---------------------------------------------------------------------------
def test_mixture_matches_a_naive_reference():
    torch.manual_seed(0)
    E, k, width, B = 2, 3, 8, 5
    enc = MixtureEncoder(E, OBS_DIM, 12, k, width)
    state, goal = torch.randn(1, B, OBS_DIM), torch.randn(1, B, 12)
    out, weights = enc(state, goal)
    assert out.shape == (E, B, 2 * width) and weights.shape == (E, B, k)
    torch.testing.assert_close(weights.sum(-1), torch.ones(E, B))
    assert (weights > 0).all()

    def linear(layer, member, x):
        return x @ layer.weight[member] + layer.bias[member]

    def mlp(net, member, x):
        for layer in net.hidden:
            x = torch.relu(linear(layer, member, x))
        return linear(net.last, member, x)

    for e in range(E):
        task = mlp(enc.task_encoder, e, goal[0])
        w = torch.softmax(mlp(enc.attention, e, task), dim=-1)
        experts = torch.stack([mlp(enc.encoders, e * k + j, state[0]) for j in range(k)])  # [k,B,w]
        mixed = (w.T.unsqueeze(-1) * experts).sum(0)
        torch.testing.assert_close(out[e], torch.cat([mixed, task], -1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(weights[e], w, rtol=1e-5, atol=1e-6)


def test_attention_reads_the_task_encoding_with_its_gradient_stopped():
    """As in mtrl's CARE: the attention trains only its own weights; the task encoder learns
    through the task encoding the trunk reads, never through the attention."""
    torch.manual_seed(1)
    width = 8
    enc = MixtureEncoder(1, OBS_DIM, 12, 3, width)
    out, _ = enc(torch.randn(1, 4, OBS_DIM), torch.randn(1, 4, 12))
    out[..., :width].pow(2).sum().backward()  # the mixture part only
    assert all(p.grad is None or not p.grad.abs().any() for p in enc.task_encoder.parameters())
    assert enc.attention.last.weight.grad.abs().sum() > 0
    assert enc.encoders.last.weight.grad.abs().sum() > 0
    enc.zero_grad(set_to_none=True)
    out, _ = enc(torch.randn(1, 4, OBS_DIM), torch.randn(1, 4, 12))
    out[..., width:].pow(2).sum().backward()  # the task encoding part
    assert enc.task_encoder.last.weight.grad.abs().sum() > 0


def test_ensemble_members_have_their_own_mixtures():
    torch.manual_seed(2)
    enc = MixtureEncoder(2, OBS_DIM, 12, 3, 8)
    with torch.no_grad():
        for p in enc.encoders.parameters():  # change member 1's encoders only (rows 3..5)
            p[3:].add_(1.0)
    state, goal = torch.randn(1, 4, OBS_DIM), torch.randn(1, 4, 12)
    out, _ = enc(state, goal)
    ref = MixtureEncoder(2, OBS_DIM, 12, 3, 8)
    ref.load_state_dict(enc.state_dict())
    with torch.no_grad():
        for p in ref.encoders.parameters():
            p[3:].sub_(1.0)
    out2, _ = ref(state, goal)
    torch.testing.assert_close(out[0], out2[0])
    assert not torch.allclose(out[1], out2[1])


# -- the agent -------------------------------------------------------------------------------------
def test_capability_table():
    assert tuple(KINDS) == AGENT_KINDS
    care = agent_kind("care")
    assert care.uses_text and not care.uses_context and not care.has_routing
    assert not care.uses_task_id and care.backbone == "care"
    with pytest.raises(ConfigError, match="unknown agent"):
        agent_kind("dreamer")


def test_care_agent_is_conditioned_on_the_goal_text_alone():
    agent = _care()
    assert agent.encoder is None and agent.cond_dim == TEXT_DIM
    assert agent.uses_text and not agent.uses_context and not agent.has_routing
    # the critic's mixture encodes the observation; the action joins the trunk after it
    body = agent.critic.body
    assert body.mixture.encoders.hidden[0].in_dim == OBS_DIM
    assert body.net.hidden[0].in_dim == body.mixture.out_dim + ACT_DIM
    obs = np.random.default_rng(0).normal(size=(2, OBS_DIM)).astype(np.float32)
    g = torch.randn(2, TEXT_DIM, generator=torch.Generator().manual_seed(3)).numpy()
    a = TaskBelief(agent, 2, goal=g, task_ids=[0, 1]).act(obs, deterministic=True)
    b = TaskBelief(agent, 2, goal=g, task_ids=[2, -1]).act(obs, deterministic=True)
    c = TaskBelief(agent, 2, goal=g[::-1].copy(), task_ids=[0, 1]).act(obs, deterministic=True)
    assert torch.equal(a.action, b.action)  # task ids are not read
    assert not torch.allclose(a.action, c.action)  # the goal text is
    assert a.routing is None
    belief = TaskBelief(agent, 2, goal=g)
    belief.observe(obs, np.zeros((2, ACT_DIM), np.float32), np.ones(2, np.float32), obs)
    mu, std = belief.posterior_numpy()
    assert mu.shape == (2, 0) and std.shape == (2, 0)
    with pytest.raises(ValueError, match="goal text"):
        TaskBelief(agent, 2).act(obs)


# -- through the whole project ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def care_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("care")
    data = generate_dataset(BenchmarkConfig(horizon=30), root / "data", episodes=2,
                            noise_levels=(0.1,), random_episodes=1, workers=1, progress=False)
    cfg = tiny("care", steps=60)
    cfg.train.mode, cfg.train.offline, cfg.sac.bc_weight = "offline", str(data), 2.5
    cfg.train.checkpoint_every, cfg.train.eval_every = 60, 60
    run = root / "runs" / "care-s0"
    out = cmrl.train(cfg, run, progress=False)
    assert out["grad_steps"] == 60 and out["env_steps"] == 0
    return run


def test_care_trains_offline_loads_and_evaluates(care_run):
    agent = cmrl.load_agent(care_run)
    assert agent.kind == "care" and agent.info["text_encoder"]["name"] == "minilm"
    assert agent.uses_text and not agent.uses_context and not agent.has_routing
    assert agent.text_encoder is not None and agent.encode_goal("open the drawer").shape == (384,)
    last = [json.loads(x) for x in (care_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert "eval_test_success/window-close-v3" in last and "kl" not in last
    res = agent.evaluate(num_variations=2, adaptation_episodes=1, eval_episodes=1, seed=0)
    for split in ("train", "test"):
        for r in res["splits"][split]["tasks"].values():
            # no context to adapt from: the deterministic zero-shot episode is the evaluation one
            assert r["zero_shot_success"] == r["success_rate"]
            assert r["zero_shot_return"] == pytest.approx(r["mean_return"])
    steps = list(agent.rollout("window-close-v3", "close the window", adaptation_episodes=1,
                               horizon=5))
    assert len(steps) == 5 and all(s.routing is None and s.z_mean.shape == (0,) for s in steps)
    with pytest.raises(NoRoutingError, match="care agent"):
        task_routing(agent, "window-close-v3", episodes=1, horizon=5)


def test_care_under_both_evaluators_and_the_report(care_run):
    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "cmrl", *map(str, args)], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    cli("eval", "--checkpoint", care_run, "--variations", 1, "--adaptation-episodes", 1,
        "--json", care_run / "evaluation.json")
    cli("eval", "--checkpoint", care_run, "--protocol", "metaworld", "--variations", 1,
        "--adaptation-episodes", 1, "--json", care_run / "metaworld_evaluation.json")
    r = cli("report", "--root", care_run.parent)
    res = json.loads((care_run.parent / "results.json").read_text())
    assert list(res["agents"]) == ["care"]
    for proto in ("cmrl", "metaworld"):
        assert "window-close-v3" in res["agents"]["care"]["protocols"][proto]["tasks"]
    assert "| care (n=1) |" in r.stdout
    # the per-group table of scripts/reproduce_ml10.sh (ML4's meta-train tasks: object-state ones)
    root = Path(__file__).resolve().parents[1]
    g = subprocess.run([sys.executable, str(root / "scripts" / "ml10_groups.py"), care_run.parent],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert g.returncode == 0, g.stderr[-2000:]
    rows = {line.split("|")[2].strip(): line for line in g.stdout.splitlines()
            if line.startswith("| care |")}
    assert set(rows) == {"goal position", "object state", "held out"}
    assert rows["goal position"].count(" - ") == 4  # ML4 has no goal-position task
    for group in ("object state", "held out"):  # evaluator's zero-shot and adapted, MW adapted
        assert rows[group].count("(n=1)") == 3, rows[group]
