"""Observation standardisation: the module, where the networks apply it, when a run fixes it, and
that it survives checkpoints, resumes and fine-tuning; plus the critic warm-up of fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import cmrl
from cmrl.algo.agent import MetaAgent
from cmrl.runs.checkpoint import MODEL_FILE
from cmrl.config import BenchmarkConfig
from cmrl.data import generate_dataset, load_dataset
from cmrl.experiments.finetune import finetune
from cmrl.nets.normalizer import CLIP, STD_FLOOR, ObsNormalizer, observation_stats
from cmrl.algo.sac import SACLearner
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config
from tests.test_end_to_end import tiny


def test_normalizer_identity_set_floor_and_clip():
    n = ObsNormalizer(3)
    x = torch.tensor([[1.0, -2.0, 3.0]])
    assert n.is_identity and torch.equal(n(x), x)
    n.set(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([2.0, 0.0, 1.0]))
    assert not n.is_identity
    assert n.std[1] == STD_FLOOR  # a constant dimension is not divided by zero
    y = n(torch.tensor([[3.0, 1.0, 3.0]]))
    assert torch.allclose(y, torch.tensor([[1.0, CLIP, 0.0]]))  # 1 / 0.01 = 100, clipped


def test_observation_stats_and_bad_input():
    obs = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]], np.float32)
    mean, std = observation_stats(obs)
    assert torch.allclose(mean, torch.tensor([2.0, 1.0]))
    assert torch.allclose(std, torch.tensor([2.0, STD_FLOOR]))
    with pytest.raises(ValueError, match="at least 2"):
        observation_stats(obs[:1])


@pytest.mark.parametrize("kind", ["cmrl", "pearl", "sm"])
def test_every_network_reads_standardised_observations(kind):
    """An agent with statistics (m, s) on raw obs equals the identity agent on (obs - m) / s."""
    torch.manual_seed(0)
    text_dim = 8 if kind == "cmrl" else 0
    agent = MetaAgent(tiny_config(kind), OBS_DIM, ACT_DIM, text_dim, ML4_TRAIN)
    plain = MetaAgent(tiny_config(kind), OBS_DIM, ACT_DIM, text_dim, ML4_TRAIN)
    plain.load_state_dict(agent.state_dict())
    mean, std = torch.randn(OBS_DIM), torch.rand(OBS_DIM) + 0.5
    agent.set_obs_stats(mean, std)
    assert agent.obs_normalized and not plain.obs_normalized
    for m in agent.modules():  # the critic targets too
        if isinstance(m, ObsNormalizer):
            assert torch.equal(m.mean, mean) and torch.equal(m.std, std)
    obs, act = torch.randn(5, OBS_DIM), torch.rand(5, ACT_DIM) * 2 - 1
    cond = torch.randn(5, agent.cond_dim)
    norm = (obs - mean) / std
    with torch.no_grad():
        a = agent.actor(obs, cond, deterministic=True).mean_action
        b = plain.actor(norm, cond, deterministic=True).mean_action
        assert torch.allclose(a, b, atol=1e-5)
        assert torch.allclose(agent.critic(obs, act, cond), plain.critic(norm, act, cond), atol=1e-5)
        assert torch.allclose(agent.critic_target(obs, act, cond),
                              plain.critic_target(norm, act, cond), atol=1e-5)
        if agent.uses_context:
            ctx = torch.cat([obs, act, torch.rand(5, 1), obs + 0.1], -1)[None]
            ctx_norm = torch.cat([norm, act, ctx[0, :, OBS_DIM + ACT_DIM:][:, :1],
                                  (obs + 0.1 - mean) / std], -1)[None]
            goal = torch.randn(1, text_dim) if kind == "cmrl" else None
            mu_a, var_a = agent.infer_posterior(ctx, goal)
            mu_b, var_b = plain.infer_posterior(ctx_norm, goal)
            assert torch.allclose(mu_a, mu_b, atol=1e-5) and torch.allclose(var_a, var_b, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_dataset(BenchmarkConfig(horizon=30), tmp_path_factory.mktemp("d") / "data",
                            episodes=2, noise_levels=(0.1,), random_episodes=1, workers=1,
                            progress=False)


def _stats(run) -> tuple[torch.Tensor, torch.Tensor]:
    n = cmrl.load_agent(run).agent.actor.obs_norm
    return n.mean.clone(), n.std.clone()


def _train_offline(kind: str, data, run, checkpoint_every: int) -> None:
    cfg = tiny(kind, steps=20)
    cfg.train.mode, cfg.train.offline, cfg.sac.bc_weight = "offline", str(data), 2.5
    cfg.train.checkpoint_every, cfg.train.eval_every = checkpoint_every, 0
    cmrl.train(cfg, run, progress=False)


def test_offline_run_fixes_dataset_statistics_and_resume_keeps_them(tiny_data, tmp_path):
    run = tmp_path / "run"
    _train_offline("pearl", tiny_data, run, checkpoint_every=10)
    data, _ = load_dataset(tiny_data)
    want = observation_stats(np.concatenate([data[t].obs for t in ML4_TRAIN]))
    got = _stats(run)
    assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)

    from cmrl.algo.trainer import config_for_resume

    cmrl.train(config_for_resume(run, {"train.steps": 40}), run, resume=True, progress=False)
    again = _stats(run)
    assert torch.equal(again[0], got[0]) and torch.equal(again[1], got[1])


def test_online_run_fixes_statistics_at_its_first_update_and_obs_norm_off(tmp_path):
    run = tmp_path / "on"
    cmrl.train(tiny("sm", steps=180), run, progress=False)
    mean, std = _stats(run)
    assert not torch.equal(std, torch.ones_like(std)) and torch.isfinite(mean).all()
    cfg = tiny("sm", steps=180)
    cfg.net.obs_norm = False
    off = tmp_path / "off"
    cmrl.train(cfg, off, progress=False)
    assert cmrl.load_agent(off).agent.actor.obs_norm.is_identity


def test_finetuning_keeps_the_source_statistics(tiny_data, tmp_path):
    src = tmp_path / "src"
    _train_offline("cmrl", tiny_data, src, checkpoint_every=20)
    ft = tmp_path / "ft"
    finetune(src, "window-close-v3", 60, ft, eval_every=60, eval_variations=1, envs_per_task=1,
             progress=False)
    a, b = _stats(src), _stats(ft)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_checkpoint_from_before_standardisation_loads_as_identity(tmp_path):
    run = tmp_path / "old"
    cmrl.train(tiny("pearl", steps=180), run, progress=False)
    new = cmrl.load_agent(run)
    obs = np.random.default_rng(0).normal(size=(4, OBS_DIM)).astype(np.float32)
    tensors = load_file(run / MODEL_FILE)
    assert any(k.endswith("obs_norm.mean") for k in tensors)
    with safe_open(run / MODEL_FILE, "pt") as f:  # keep the header's format marker
        meta = f.metadata()
    save_file({k: v for k, v in tensors.items() if "obs_norm" not in k}, run / MODEL_FILE, meta)
    old = cmrl.load_agent(run)
    assert old.agent.actor.obs_norm.is_identity
    # Identity statistics on the same weights: the network now reads the raw observation.
    with torch.no_grad():
        cond = torch.zeros(4, old.agent.cond_dim)
        raw = old.agent.actor(torch.as_tensor(obs), cond, deterministic=True).mean_action
        mean, std = new.agent.actor.obs_norm.mean, new.agent.actor.obs_norm.std
        ref = new.agent.actor(torch.as_tensor(obs) * std + mean, cond, deterministic=True).mean_action
    assert torch.allclose(raw, ref, atol=1e-4)


def test_critic_warmup_leaves_actor_and_temperatures_alone():
    torch.manual_seed(0)
    agent = MetaAgent(tiny_config("sm"), OBS_DIM, ACT_DIM, 0, ML4_TRAIN)
    learner = SACLearner(agent)
    T, B = len(ML4_TRAIN), 8
    batch = {"obs": torch.randn(T, B, OBS_DIM), "actions": torch.rand(T, B, ACT_DIM) * 2 - 1,
             "rewards": torch.rand(T, B), "next_obs": torch.randn(T, B, OBS_DIM),
             "dones": torch.zeros(T, B)}
    actor = [p.clone() for p in agent.actor.parameters()]
    critic = [p.clone() for p in agent.critic.parameters()]
    alpha = agent.log_alpha.clone()
    m = learner.update(batch, None, None, torch.arange(T), update_actor=False)
    assert "actor_loss" not in m and np.isfinite(m["critic_loss"])
    assert all(torch.equal(a, b) for a, b in zip(actor, agent.actor.parameters()))
    assert torch.equal(alpha, agent.log_alpha)
    assert any(not torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))
    learner.update(batch, None, None, torch.arange(T))
    assert any(not torch.equal(a, b) for a, b in zip(actor, agent.actor.parameters()))
