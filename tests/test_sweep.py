"""`cmrl sweep`: an agents x seeds grid through a real (local) Ray Tune, then the aggregate table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cmrl.experiments.sweep import aggregate, markdown_table

pytest.importorskip("ray.tune", reason="Ray Tune is an optional install: requirements-ray.txt")


def test_two_trial_sweep_through_ray(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "cmrl", "sweep", "--agents", "pearl", "--seeds", "0,1",
           "--out", str(out), "--cpus-per-trial", "1", "--steps", "60", "--horizon", "30",
           "--envs-per-task", "1", "--warmup-steps", "0", "--updates-per-step", "0.1",
           "--eval-every", "60", "--checkpoint-every", "60", "--text-encoder", "minilm",
           "--batch-size", "16", "--num-layers", "2", "--num-modules", "2", "--module-width", "16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "sweep.json").read_text())
    assert res["errors"] == [] and res["seeds"] == [0, 1]
    for seed in (0, 1):  # ordinary run directories, written by the trainer
        run = out / f"pearl-s{seed}"
        assert (run / "model.safetensors").exists() and (run / "config.json").exists()
        assert json.loads((run / "config.json").read_text())["config"]["train"]["seed"] == seed
    row = res["table"]["pearl"]
    assert row["seeds_evaluated"] == 2
    wc = row["tasks"]["window-close-v3"]
    assert wc["split"] == "test" and wc["n_seeds"] == 2 and 0.0 <= wc["success_mean"] <= 1.0
    assert "| pearl |" in r.stdout
    # a re-run resumes the finished trials instead of starting over
    before = (out / "pearl-s0" / "metrics.jsonl").read_text()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "pearl-s0" / "metrics.jsonl").read_text() == before


def test_aggregate_mean_and_spread(tmp_path):
    for i, s in enumerate((0.0, 1.0, 0.5)):
        d = tmp_path / f"sm-s{i}"
        d.mkdir()
        recs = [{"step": 1, "eval_train_success/a-v3": 0.0},
                {"step": 2, "eval_train_success/a-v3": s, "eval_test_success/b-v3": 1.0},
                {"step": 3, "critic_loss": 1.0}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{cut")
    table = aggregate({"sm": sorted(tmp_path.glob("sm-s*"))})
    a = table["sm"]["tasks"]["a-v3"]
    assert a["success_mean"] == pytest.approx(0.5) and a["success_std"] == pytest.approx(0.5)
    assert table["sm"]["tasks"]["b-v3"]["split"] == "test"
    assert markdown_table(table).splitlines()[0] == "| agent | a-v3 | b-v3 |"


def test_sweep_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cmrl", "sweep", "--agents", "dreamer", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown agent" in r.stderr
