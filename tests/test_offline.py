"""Offline training from a generated Minari dataset (every agent, and BC alone), then online."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cmrl
from cmrl.config import BenchmarkConfig, RunConfig
from cmrl.data import generate_dataset
from tests.test_end_to_end import tiny


def test_offline_then_online(tmp_path):
    data = generate_dataset(BenchmarkConfig(horizon=30), tmp_path / "data", episodes=2,
                            noise_levels=(0.1,), random_episodes=1, workers=1, progress=False)
    cfg = tiny("cmrl", steps=40)
    cfg.train.mode, cfg.train.offline, cfg.sac.bc_weight = "offline", str(data), 2.5
    cfg.train.checkpoint_every, cfg.train.eval_every = 20, 0
    run = tmp_path / "run"
    out = cmrl.train(cfg, run, progress=False)
    assert out == {**out, "env_steps": 0, "grad_steps": 40}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [20, 40] and "bc_mse" in lines[-1]
    agent = cmrl.load_agent(run)
    assert agent.info["mode"] == "offline" and agent.info["offline_data"]["path"] == str(data)

    from cmrl.algo.trainer import config_for_resume

    online = config_for_resume(run, {"train.mode": "online", "train.steps": 180})
    out = cmrl.train(online, run, resume=True, progress=False)
    assert out["env_steps"] == 180 and out["grad_steps"] > 40  # counters continue
    info = cmrl.load_agent(run).info
    assert info["mode"] == "online" and info["offline_data_mixed_online"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_dataset(BenchmarkConfig(horizon=30), tmp_path_factory.mktemp("d") / "data",
                            episodes=2, noise_levels=(0.1,), random_episodes=1, workers=1,
                            progress=False)


@pytest.mark.parametrize("kind", ["cmrl", "pearl", "sm", "care"])
def test_offline_training_reduces_losses(kind, tiny_data, tmp_path):
    cfg = tiny(kind, steps=300)
    cfg.train.mode, cfg.train.offline, cfg.sac.bc_weight = "offline", str(tiny_data), 2.5
    cfg.train.checkpoint_every, cfg.train.eval_every = 50, 0
    run = tmp_path / kind
    cmrl.train(cfg, run, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["bc_mse"] < 0.95 * lines[0]["bc_mse"], [x["bc_mse"] for x in lines]
    assert all(np.isfinite(x["critic_loss"]) for x in lines)
    agent = cmrl.load_agent(run)
    assert agent.kind == kind and agent.info["mode"] == "offline"


def test_behaviour_cloning_alone_learns_the_task(tmp_path):
    """BC on 30 scripted-expert episodes of one task reaches clearly non-zero success on goal
    variations it never saw: the dataset's observations, actions and episodes line up."""
    bench = BenchmarkConfig(name="ml1:drawer-open-v3", horizon=200)
    data = generate_dataset(bench, tmp_path / "data", episodes=30, noise_levels=(0.1,),
                            random_episodes=0, workers=2, progress=False)
    cfg = RunConfig(benchmark=bench)
    cfg.train.agent, cfg.train.mode, cfg.train.offline = "pearl", "offline", str(data)
    cfg.train.steps, cfg.train.eval_every, cfg.train.checkpoint_every = 2000, 0, 2000
    cfg.train.text_encoder = "minilm"
    cfg.net.mlp_hidden = [256, 256]
    cfg.sac.bc_only = True
    run = tmp_path / "bc"
    cmrl.train(cfg, run, progress=False)
    res = cmrl.load_agent(run).evaluate(("train",), num_variations=10, adaptation_episodes=1)
    assert res["splits"]["train"]["tasks"]["drawer-open-v3"]["success_rate"] >= 0.3
