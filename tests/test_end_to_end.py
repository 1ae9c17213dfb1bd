"""End to end with tiny budgets: train, save, load, evaluate; kill and resume; Meta-World's own
meta-RL evaluation on a trained agent; the CLI's error messages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cmrl
from cmrl.runs import checkpoint as ckpt
from cmrl.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny(kind: str, steps: int = 360) -> RunConfig:
    cfg = RunConfig()
    cfg.train.agent = kind
    cfg.train.steps = steps
    cfg.train.envs_per_task = 1
    cfg.train.warmup_steps = 0
    cfg.train.updates_per_step = 0.1
    cfg.train.checkpoint_every = 180
    cfg.train.eval_every = 360
    cfg.train.eval_variations = 1
    cfg.train.text_encoder = "minilm"
    cfg.benchmark.horizon = 30
    cfg.net.num_layers, cfg.net.num_modules, cfg.net.module_width = 2, 2, 16
    cfg.net.embed_dim, cfg.net.gating_hidden, cfg.net.mlp_hidden = 16, 16, [32, 32]
    cfg.net.encoder_hidden = [32, 32]
    cfg.sac.batch_size, cfg.sac.context_size = 32, 16
    return cfg


@pytest.mark.parametrize("kind", ["cmrl", "pearl", "sm", "care"])
def test_train_save_load_evaluate(kind, tmp_path):
    run = tmp_path / kind
    out = cmrl.train(tiny(kind), run, progress=False)
    assert out["env_steps"] == 360 and out["grad_steps"] == 36  # 2 iterations x 180 steps x 0.1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [180, 360]
    last = lines[-1]
    for task in ("drawer-open-v3", "drawer-close-v3", "window-open-v3"):
        assert 0.0 <= last[f"train_success/{task}"] <= 1.0
        assert f"eval_train_success/{task}" in last
    assert "eval_test_success/window-close-v3" in last
    assert np.isfinite(last["critic_loss"]) and last["alpha"] > 0

    agent = cmrl.load_agent(run)
    assert agent.kind == kind and agent.info["env_steps"] == 360
    assert agent.info["test_tasks"] == ["window-close-v3"]
    assert "window-close-v3" not in agent.agent.train_tasks
    res = agent.evaluate(num_variations=2, adaptation_episodes=1, eval_episodes=1, seed=3)
    again = agent.evaluate(num_variations=2, adaptation_episodes=1, eval_episodes=1, seed=3)
    for split in ("train", "test"):
        for task, r in res["splits"][split]["tasks"].items():
            assert 0.0 <= r["success_rate"] <= 1.0
            assert r["mean_return"] == again["splits"][split]["tasks"][task]["mean_return"]


def test_rollout_iterator_streams_posterior_and_routing(tmp_path):
    run = tmp_path / "cmrl"
    cmrl.train(tiny("cmrl", steps=180), run, progress=False)
    agent = cmrl.load_agent(run)
    steps = list(agent.rollout("window-close-v3", "close the window", variation=1,
                               adaptation_episodes=2, eval_episodes=1, render=True, size=64))
    assert len(steps) == 3 * 30
    assert [s.phase for s in steps[::30]] == ["adapt", "adapt", "eval"]
    first, last_adapt = steps[0], steps[59]
    assert first.routing is not None and len(first.routing) == 2  # L-1 = 1 matrix + final mix
    assert np.allclose(first.routing[0].sum(-1), 1.0, atol=1e-5)
    assert last_adapt.num_transitions == 60 and steps[-1].num_transitions == 60
    assert (last_adapt.z_std <= first.z_std + 1e-6).all()  # each transition sharpens the posterior
    frames = [s.frame for s in steps[:: 15]]
    assert frames[0].shape == (64, 64, 3) and frames[0].dtype == np.uint8
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])
    with pytest.raises(cmrl.GoalTextError):
        next(agent.rollout("window-close-v3", "   "))


def test_metaworld_metalearning_evaluation(tmp_path):
    import gymnasium as gym
    from metaworld.evaluation import metalearning_evaluation

    run = tmp_path / "cmrl"
    cmrl.train(tiny("cmrl", steps=180), run, progress=False)
    agent = cmrl.load_agent(run)
    envs = gym.make_vec("Meta-World/custom-ml-envs", train_envs=list(cmrl.envs.tasks.ML4_TRAIN),
                        test_envs=["window-close-v3"], meta_batch_size=2, split="test", seed=0,
                        max_episode_steps=30, vector_strategy="sync")
    mw = agent.as_metaworld_agent(goal_texts={"window-close-v3": "close the window"})
    mean_success, mean_return, per_task = metalearning_evaluation(
        mw, envs, num_evals=1, adaptation_steps=1, adaptation_episodes=2, evaluation_episodes=1)
    envs.close()
    assert set(per_task) == {"window-close-v3"}
    assert 0.0 <= mean_success <= 1.0 and np.isfinite(mean_return)
    assert mw.belief is not None and (mw.belief.num_transitions > 0).all()


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "cmrl", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, **kw)


def test_kill_and_resume_via_cli(tmp_path):
    run = tmp_path / "killed"
    args = ["train", "--agent", "pearl", "--steps", "100000", "--seed", "1", "--run-dir", str(run),
            "--horizon", "30", "--envs-per-task", "1", "--warmup-steps", "0",
            "--updates-per-step", "0.1", "--checkpoint-every", "180", "--eval-every", "0",
            "--module-width", "16", "--no-progress", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "cmrl", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "state").is_dir():
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, state = ckpt.load_training_state(run)
    saved = state["env_steps"]
    assert saved >= 180 and saved % 180 == 0
    tensors, _ = ckpt.load_training_state(run)
    replay_before = sum(v.shape[0] for k, v in tensors.items() if k.endswith(".rewards")
                        and k.startswith("replay."))
    assert replay_before == saved

    res = _cli("train", "--run-dir", str(run), "--resume", "--steps", str(saved + 180),
               "--no-progress")
    assert res.returncode == 0, res.stderr
    _, state = ckpt.load_training_state(run)
    assert state["env_steps"] == saved + 180
    assert state["grad_steps"] > 0
    tensors, _ = ckpt.load_training_state(run)
    replay_after = sum(v.shape[0] for k, v in tensors.items() if k.endswith(".rewards")
                       and k.startswith("replay."))
    assert replay_after == saved + 180  # the buffers continued, not restarted
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 180


def test_cli_errors_are_clear(tmp_path):
    res = _cli("eval", "--checkpoint", str(tmp_path / "nope"))
    assert res.returncode == 2 and "no such run directory" in res.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    res = _cli("eval", "--checkpoint", str(bad))
    assert res.returncode == 2 and "config.json" in res.stderr and "Traceback" not in res.stderr
    res = _cli("train", "--run-dir", str(tmp_path / "x"), "--benchmark", "custom",
               "--train-tasks", "drawer-open-v3,no-such-task-v3", "--no-progress")
    assert res.returncode == 2 and "no-such-task-v3" in res.stderr
