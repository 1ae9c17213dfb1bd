"""Recipes (cmrl/experiments/recipes.py) and the run status file (cmrl/runs/run_status.py): data made once and
reused, phases run in order and resumed, metrics kept across phases, status and estimates."""

from __future__ import annotations

import json
import time

import pytest

from cmrl.runs import checkpoint as ckpt
from cmrl.config import ConfigError
from cmrl.experiments.recipes import RECIPES, DataSpec, ensure_dataset, estimate_seconds, get_recipe, run_recipe
from cmrl.runs.run_status import STATUS_FILE, RunStatus, StatusWriter, read_status
from cmrl.experiments.recipes import RECIPE_VARIANT
from cmrl.variants import variant_fields


def test_every_recipe_builds_valid_configs_from_the_library():
    for name, recipe in RECIPES.items():
        phases = recipe.phases("ml4", 3, "cpu")
        assert phases, name
        for ph in phases:
            assert ph.name in ("data", "offline", "online")
            if ph.config is not None:
                ph.config.validate()
                assert ph.config.train.seed == 3 and ph.config.train.agent == "cmrl"
                for key, value in variant_fields(RECIPE_VARIANT).items():
                    section, field = key.split(".")
                    assert getattr(getattr(ph.config, section), field) == value, (name, key)
    quick = RECIPES["quick"].phases("ml4")
    assert [p.name for p in quick] == ["data", "offline"]
    assert quick[1].config.train.mode == "offline"
    oo = RECIPES["offline-online"].phases("ml4")
    assert [p.name for p in oo] == ["data", "offline", "online"]
    assert oo[2].config.train.offline_ratio > 0  # the offline data stays in every batch
    assert oo[2].config.sac.bc_weight > 0
    full = RECIPES["full"].phases("ml4")
    assert full[0].config.train.prior_data == "expert" and full[0].config.net.module_width == 128
    with pytest.raises(ConfigError, match="unknown recipe"):
        get_recipe("nope")


def test_smoke_override_shrinks_every_phase():
    phases = RECIPES["offline-online"].phases("ml4", steps=30, data_episodes=2)
    assert phases[0].data.episodes == 2 and phases[0].data.random_episodes <= 2
    for ph in phases[1:]:
        assert ph.config.train.steps == 30
        assert ph.config.train.eval_every <= 30 and ph.config.train.checkpoint_every <= 30
    assert phases[2].config.benchmark.horizon <= 30 and phases[2].config.train.envs_per_task == 1


def test_data_spec_key_names_its_content():
    a, b = DataSpec(), DataSpec(episodes=31)
    assert a.key() == DataSpec().key() and a.key() != b.key()
    assert a.key().startswith("ml4-")
    assert DataSpec(benchmark="ml1:window-close-v3").key().startswith("ml1_window-close-v3-")


def test_dataset_is_made_once_and_reused(tmp_path):
    spec = DataSpec(episodes=1, noise=(0.1,), random_episodes=1, horizon=20)
    path = ensure_dataset(spec, tmp_path)
    manifest = path / "cmrl_dataset.json"
    assert manifest.is_file()
    stamp = manifest.stat().st_mtime_ns
    time.sleep(0.01)
    assert ensure_dataset(spec, tmp_path) == path
    assert manifest.stat().st_mtime_ns == stamp  # not made again


def test_offline_online_recipe_runs_resumes_and_keeps_the_offline_history(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    out = run_recipe("offline-online", run, data_root=data, steps=30, data_episodes=1)
    assert out["offline"]["grad_steps"] == 30 and out["online"]["env_steps"] >= 30
    status = read_status(run)
    assert status["state"] == "finished" and status["phase"] == "online"
    assert status["phases"] == ["data", "offline", "online"] and status["device"] == "cpu"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("env_steps") == 0 and r.get("grad_steps") == 30 for r in rows), \
        "the offline phase's metrics were dropped when the online phase resumed the run"
    assert rows[-1]["env_steps"] >= 30
    info = ckpt.read_run_info(run)
    assert info["config"]["train"]["mode"] == "online"
    assert str(data) in info["config"]["train"]["offline"]  # the made data, not a default path
    # a second call finds every phase done and trains nothing more
    again = run_recipe("offline-online", run, data_root=data, steps=30, data_episodes=1)
    assert "offline" not in again and "online" not in again
    assert read_status(run)["state"] == "finished"
    assert ckpt.read_run_info(run)["env_steps"] == info["env_steps"]


def test_failed_recipe_says_why_in_its_status(tmp_path, monkeypatch):
    import cmrl.experiments.recipes as recipes

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(recipes, "ensure_dataset", boom)
    with pytest.raises(RuntimeError):
        run_recipe("quick", tmp_path / "run", data_root=tmp_path / "d", steps=5)
    status = read_status(tmp_path / "run")
    assert status["state"] == "failed" and "disk full" in status["message"]


def test_run_status_rate_and_eta(tmp_path):
    st = RunStatus(tmp_path, ["offline"], "cpu", "fp32")
    st.phase("offline", 1000, "gradient steps", step=100)
    st._start_time -= 10.0  # ten seconds ago
    st.progress(300)
    data = read_status(tmp_path)
    assert data["rate"] == pytest.approx(20.0, rel=0.05)
    assert data["eta_s"] == pytest.approx(35.0, rel=0.05)
    StatusWriter(st).write({"step": 1000})
    assert read_status(tmp_path)["eta_s"] == 0
    st.end("stopped", "x" * 5000)
    assert len(read_status(tmp_path)["message"]) == 2000
    with pytest.raises(ValueError):
        st.end("exploded")
    (tmp_path / STATUS_FILE).write_text("[1, 2")
    assert read_status(tmp_path) is None
    assert read_status(tmp_path / "missing") is None


def test_estimate_names_each_phase_and_knows_cached_data(tmp_path):
    recipe = get_recipe("quick")
    est = estimate_seconds(recipe, "ml4", "cpu", tmp_path)
    assert set(est["phases"]) == {"data", "offline"} and est["device"] == "cpu"
    assert est["phases"]["data"] > 0 and est["phases"]["offline"] > 0
    assert est["total_s"] == pytest.approx(sum(est["phases"].values()))
    (tmp_path / recipe.phases("ml4")[0].data.key()).mkdir()
    assert estimate_seconds(recipe, "ml4", "cpu", tmp_path)["phases"]["data"] == 0.0


def test_a_plain_training_run_keeps_its_own_status(tmp_path):
    from cmrl.algo.trainer import train
    from tests.test_end_to_end import tiny

    run = tmp_path / "run"
    train(tiny("pearl", steps=60).updated({"train.checkpoint_every": 60, "train.eval_every": 0}),
          run, progress=False)
    status = read_status(run)
    assert status["state"] == "finished" and status["phase"] == "online"
    assert status["phases"] == ["online"] and status["unit"] == "env steps"
    assert status["device"] == "cpu" and status["step"] >= 60
