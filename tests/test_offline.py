"""Offline training from a generated Minari dataset, then resuming it online."""

from __future__ import annotations

import json

import cmrl
from cmrl.config import BenchmarkConfig
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

    from cmrl.trainer import config_for_resume

    online = config_for_resume(run, {"train.mode": "online", "train.steps": 180})
    out = cmrl.train(online, run, resume=True, progress=False)
    assert out["env_steps"] == 180 and out["grad_steps"] > 40  # counters continue
    info = cmrl.load_agent(run).info
    assert info["mode"] == "online" and info["offline_data_mixed_online"]
