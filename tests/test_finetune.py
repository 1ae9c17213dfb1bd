"""Learning to learn: `cmrl finetune` adapts a meta-trained agent to a new task and keeps training it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import cmrl
from cmrl.algo.trained_agent import load_agent
from cmrl.runs.checkpoint import CheckpointError
from cmrl.config import ConfigError
from cmrl.experiments.finetune import finetune, finetune_config, first_reaching
from tests.test_end_to_end import tiny

HELD_OUT = "window-close-v3"


@pytest.fixture(scope="module")
def meta_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("meta")
    runs = {}
    for kind in ("cmrl", "pearl", "sm"):
        runs[kind] = base / kind
        cmrl.train(tiny(kind, steps=180), runs[kind], progress=False)
    return runs


@pytest.mark.parametrize("kind", ["cmrl", "pearl", "sm"])
def test_finetune_writes_curve_and_starts_from_the_checkpoint(kind, meta_runs, tmp_path):
    src = meta_runs[kind]
    before = (src / "model.safetensors").read_bytes()
    out = finetune(src, HELD_OUT, 120, tmp_path / "ft", eval_every=60, eval_variations=1,
                   envs_per_task=1, progress=False)
    # the curve: a zero-shot point at step 0, then one per eval period, written to metrics.jsonl
    assert [s for s, _ in out["curve"]] == [0, 60, 120]
    assert out["arm"] == "meta-trained" and out["task"] == HELD_OUT
    assert json.loads((tmp_path / "ft" / "finetune.json").read_text())["curve"] == [
        list(p) for p in out["curve"]]
    assert (src / "model.safetensors").read_bytes() == before  # the meta-trained run is untouched
    ft = load_agent(tmp_path / "ft")
    assert ft.info["train_tasks"] == [HELD_OUT] and ft.info["config"]["train"]["init_from"]
    if kind == "sm":  # a task the oracle never saw keeps the all-zeros id
        assert ft.agent.task_id(HELD_OUT) == -1 and ft.agent.cond_dim == 3


def test_finetune_initial_weights_equal_the_source(meta_runs, tmp_path):
    from cmrl.algo.trainer import Trainer

    src = load_agent(meta_runs["cmrl"])
    trainer = Trainer(finetune_config(meta_runs["cmrl"], HELD_OUT, 30), tmp_path / "a", progress=False)
    mine = trainer.agent.state_dict()
    for k, v in src.agent.state_dict().items():
        if k != "log_alpha":
            assert torch.equal(mine[k], v), k
    assert torch.allclose(mine["log_alpha"].exp(), src.agent.log_alpha.exp().mean())
    scratch = Trainer(finetune_config(meta_runs["cmrl"], HELD_OUT, 30, scratch=True), tmp_path / "b",
                      progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(scratch.agent.actor.parameters(),
                                                    trainer.agent.actor.parameters()))


def test_a_second_phase_on_the_same_tasks_keeps_each_tasks_temperature(meta_runs, tmp_path):
    from cmrl.algo.trainer import Trainer
    from cmrl.config import RunConfig

    src = load_agent(meta_runs["pearl"])
    assert src.agent.log_alpha.numel() == 3 and len(set(src.agent.log_alpha.tolist())) > 1
    cfg = RunConfig.from_dict(src.info["config"]).updated(
        {"train.init_from": str(meta_runs["pearl"]), "sac.kl_weight": 0.01})
    trainer = Trainer(cfg, tmp_path / "phase2", progress=False)
    assert torch.equal(trainer.agent.log_alpha.detach(), src.agent.log_alpha.detach())


def test_finetune_resume_and_scratch_via_cli(meta_runs, tmp_path):
    run = tmp_path / "scratch"
    base = [sys.executable, "-m", "cmrl", "finetune", "--checkpoint", str(meta_runs["pearl"]),
            "--task", HELD_OUT, "--run-dir", str(run), "--no-progress"]
    r = subprocess.run(base + ["--steps", "60", "--scratch", "--eval-every", "60",
                               "--eval-variations", "1", "--envs-per-task", "1",
                               "--critic-warmup", "7", "--bc-weight", "1.5"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["arm"] == "scratch"
    r = subprocess.run(base + ["--steps", "120", "--resume"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads((run / "finetune.json").read_text())
    assert [s for s, _ in out["curve"]] == [0, 60, 120] and out["env_step_budget"] == 120
    # The fine-tuning method is recorded, and kept on resume.
    assert out["critic_warmup_updates"] == 7 and out["bc_weight"] == 1.5


def test_finetune_bad_input(meta_runs, tmp_path):
    with pytest.raises(ConfigError, match="unknown task"):
        finetune_config(meta_runs["cmrl"], "window-slam-v3", 10)
    with pytest.raises(CheckpointError):
        finetune_config(tmp_path / "nothing-here", HELD_OUT, 10)
    r = subprocess.run([sys.executable, "-m", "cmrl", "finetune", "--checkpoint", str(tmp_path),
                        "--task", HELD_OUT, "--steps", "10", "--run-dir", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr


def test_first_reaching():
    curve = [(0, 0.0), (10, 0.4), (20, 0.6), (30, 0.95), (40, 0.5)]
    assert first_reaching(curve, 0.5) == 20 and first_reaching(curve, 0.9) == 30
    assert first_reaching(curve[:2], 0.5) is None


def test_finetune_may_add_a_reward_decoder_the_source_lacks(meta_runs, tmp_path):
    from cmrl.algo.trainer import Trainer

    src = load_agent(meta_runs["pearl"])
    assert src.agent.encoder.reward_net is None
    cfg = finetune_config(meta_runs["pearl"], HELD_OUT, 30).updated({"sac.reward_decoder": 1.0})
    trainer = Trainer(cfg, tmp_path / "dec", progress=False)
    assert trainer.agent.encoder.reward_net is not None  # fresh
    mine = trainer.agent.state_dict()
    for k, v in src.agent.state_dict().items():
        if k != "log_alpha":
            assert torch.equal(mine[k], v), k
