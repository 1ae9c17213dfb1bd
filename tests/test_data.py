"""Offline datasets (cmrl.data): generation, Minari storage, loading, determinism and refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cmrl.config import BenchmarkConfig
from cmrl.data import (MANIFEST_NAME, DatasetError, WeakExpertError, dataset_id, generate_dataset,
                       held_out_tasks, load_dataset)
from cmrl.data.generation import _plan_jobs
from cmrl.envs.metaworld_env import GOAL_SLICE, TaskPool
from cmrl.envs.experts import collect_prior_episodes
from cmrl.envs.tasks import (ML4_TEST, ML4_TRAIN, Benchmark, HeldOutTaskError, goal_texts,
                             resolve_benchmark)

H = 50
TINY = dict(episodes=2, noise_levels=(0.1,), random_episodes=1, progress=False)


@pytest.fixture(scope="module")
def ml4_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml4") / "data"
    before = os.environ.get("MINARI_DATASETS_PATH")
    path = generate_dataset(BenchmarkConfig(horizon=H), out, workers=2, seed=0,
                            command="python -m cmrl data --out x", **TINY)
    assert os.environ.get("MINARI_DATASETS_PATH") == before  # restored
    return path


@pytest.fixture(scope="module")
def ml4(ml4_dir):
    return load_dataset(ml4_dir)


def test_tasks_and_manifest(ml4, ml4_dir):
    data, manifest = ml4
    assert set(data) == set(ML4_TRAIN)
    assert "window-close-v3" not in data and "window-close-v3" not in manifest["tasks"]
    assert manifest["excluded_test_tasks"] == list(ML4_TEST)
    assert manifest["train_tasks"] == list(ML4_TRAIN)
    assert manifest["benchmark"]["name"] == "ml4" and manifest["benchmark"]["horizon"] == H
    assert manifest["command"] == "python -m cmrl data --out x"
    assert manifest["seed"] == 0 and manifest["format_version"] == 1 and manifest["created"]
    assert manifest["cmrl_version"]
    assert not any(p.name.startswith(".cmrl-") for p in ml4_dir.iterdir())  # no staging left
    for task in ML4_TRAIN:
        entry = manifest["tasks"][task]
        assert entry["dataset_id"] == f"cmrl/ml4-{task}-v0"
        assert entry["episodes"] == 3 and entry["transitions"] == 3 * H
        assert entry["noise_levels"] == [0.1] and entry["random_episodes"] == 1
        assert entry["goal_texts"] == list(goal_texts(task))
        assert entry["success_rate"] == pytest.approx(
            np.mean([data[task].successes[data[task].episode_ids == e].any() for e in range(3)]))


def test_arrays(ml4):
    data, _ = ml4
    for task, d in data.items():
        assert d.task == task and d.goal_texts == goal_texts(task)
        assert d.goal_texts[0] == goal_texts(task)[0]
        n = 3 * H
        assert d.obs.shape == d.next_obs.shape == (n, 39) and d.actions.shape == (n, 4)
        for a in (d.obs, d.next_obs, d.actions, d.rewards):
            assert a.dtype == np.float32
        assert d.rewards.shape == d.dones.shape == d.successes.shape == d.episode_ids.shape == (n,)
        assert d.dones.dtype == bool and d.successes.dtype == bool
        assert np.abs(d.actions).max() <= 1.0
        assert np.isfinite(d.obs).all() and np.isfinite(d.rewards).all()
        np.testing.assert_array_equal(d.episode_ids, np.repeat(np.arange(3), H))
        ends = np.flatnonzero(d.dones)
        np.testing.assert_array_equal(ends, [H - 1, 2 * H - 1, 3 * H - 1])
        same_episode = d.episode_ids[1:] == d.episode_ids[:-1]
        np.testing.assert_array_equal(d.next_obs[:-1][same_episode], d.obs[1:][same_episode])
        assert list(d.policies) == ["expert", "expert", "random"]
        assert d.noise[:2].tolist() == pytest.approx([0.1, 0.1]) and np.isnan(d.noise[2])


def test_minari_reads_it(ml4_dir, monkeypatch):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(ml4_dir))
    assert set(minari.list_local_datasets()) == {dataset_id("ml4", t) for t in ML4_TRAIN}
    ds = minari.load_dataset("cmrl/ml4-drawer-open-v3-v0")
    assert ds.total_episodes == 3 and ds.total_steps == 3 * H
    episodes = list(ds.iterate_episodes())
    ep = episodes[0]
    assert ep.observations.shape == (H + 1, 39) and ep.actions.shape == (H, 4)
    assert ep.truncations[-1] and not ep.truncations[:-1].any() and not ep.terminations.any()
    assert ep.infos["success"].shape == (H,)
    tags = list(ds.storage.get_episode_metadata(ds.episode_indices))
    assert [t["policy"] for t in tags] == ["expert", "expert", "random"]
    assert {t["task"] for t in tags} == {"drawer-open-v3"}
    assert {t["goal_text"] for t in tags} == {"open the drawer"}
    meta = ds.storage.metadata
    assert meta["cmrl"]["task"] == "drawer-open-v3"
    assert meta["cmrl"]["goal_texts"] == list(goal_texts("drawer-open-v3"))
    assert "open the drawer" in meta["description"]


def test_same_data_whatever_the_workers(ml4, ml4_dir, tmp_path):
    path = generate_dataset(BenchmarkConfig(horizon=H), tmp_path / "w1", workers=1, seed=0, **TINY)
    data, _ = load_dataset(path)
    ref, _ = ml4
    for task in ML4_TRAIN:
        for key in ("obs", "actions", "rewards", "next_obs", "dones", "successes", "episode_ids"):
            np.testing.assert_array_equal(getattr(data[task], key), getattr(ref[task], key))
        rel = Path("cmrl") / f"ml4-{task}-v0" / "data" / "main_data.hdf5"
        assert (path / rel).read_bytes() == (ml4_dir / rel).read_bytes()
    other, _ = load_dataset(generate_dataset(BenchmarkConfig(horizon=H), tmp_path / "s1",
                                             workers=1, seed=1, **TINY))
    assert not np.array_equal(other["drawer-open-v3"].actions, ref["drawer-open-v3"].actions)


def test_expert_succeeds_with_a_long_enough_horizon(tmp_path):
    # The scripted experts need 76-95 steps: at horizon 50 they do not finish, at 120 they do.
    cfg = BenchmarkConfig(name="custom", train_tasks=["drawer-close-v3"],
                          test_tasks=["window-close-v3"], horizon=120)
    path = generate_dataset(cfg, tmp_path / "h120", episodes=2, noise_levels=(0.1,), workers=1,
                            progress=False)
    data, manifest = load_dataset(path)
    assert set(data) == {"drawer-close-v3"}
    assert manifest["tasks"]["drawer-close-v3"]["success_rate"] == 1.0
    d = data["drawer-close-v3"]
    assert all(d.successes[d.episode_ids == e].any() for e in range(2))


def test_refuses_to_overwrite(ml4_dir, tmp_path):
    cfg = BenchmarkConfig(horizon=H)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(cfg, ml4_dir, workers=1, **TINY)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a CMRL dataset"):
        generate_dataset(cfg, foreign, workers=1, **TINY)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    copy = tmp_path / "copy"
    shutil.copytree(ml4_dir, copy)
    generate_dataset(cfg, copy, workers=1, seed=3, overwrite=True, **TINY)
    data, manifest = load_dataset(copy)
    assert manifest["seed"] == 3 and set(data) == set(ML4_TRAIN)
    assert sorted(p.name for p in copy.iterdir()) == ["cmrl", MANIFEST_NAME]


def test_bad_folders_raise_dataset_error(ml4_dir, tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="not a CMRL dataset"):
        load_dataset(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(ml4_dir, bad)
    manifest_text = (bad / MANIFEST_NAME).read_text()
    (bad / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DatasetError, match="corrupt manifest") as err:
        load_dataset(bad)
    assert str(bad) in str(err.value)
    # a manifest listing the held-out task
    manifest = json.loads(manifest_text)
    manifest["tasks"]["window-close-v3"] = dict(manifest["tasks"]["drawer-open-v3"])
    (bad / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="held-out") as err:
        load_dataset(bad)
    assert str(bad) in str(err.value)
    # a missing Minari dataset
    (bad / MANIFEST_NAME).write_text(manifest_text)
    shutil.rmtree(bad / "cmrl" / "ml4-window-open-v3-v0")
    with pytest.raises(DatasetError, match="missing") as err:
        load_dataset(bad)
    assert str(bad) in str(err.value)


def test_never_plans_held_out_tasks():
    leaky = Benchmark(name="custom", train_tasks=("drawer-open-v3", "window-close-v3"),
                      test_tasks=("window-close-v3",), horizon=H, seed=0)
    with pytest.raises(HeldOutTaskError):
        _plan_jobs(leaky, 2, (0.1,), 0, 0)
    # ML1 holds out goal variations, not its task: its one task is generated
    ml1 = Benchmark(name="ml1:reach-v3", train_tasks=("reach-v3",), test_tasks=("reach-v3",),
                    horizon=H, seed=0)
    assert {j.task for j in _plan_jobs(ml1, 2, (0.1,), 1, 0)} == {"reach-v3"}


def test_dataset_ids_are_valid_minari_ids():
    from minari.dataset.minari_dataset import parse_dataset_id

    did = dataset_id("ml1:reach-v3", "reach-v3")
    assert did == "cmrl/ml1_reach-v3-reach-v3-v0"
    assert parse_dataset_id(did) == ("cmrl", "ml1_reach-v3-reach-v3", 0)


def test_rejects_empty_requests(tmp_path):
    with pytest.raises(ValueError, match="nothing to generate"):
        generate_dataset(BenchmarkConfig(horizon=H), tmp_path / "x", episodes=0, progress=False)
    assert not (tmp_path / "x").exists()


# -- the scripted experts read the goal the dataset hides ------------------------------------------
ML10_TRAIN = {"reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3",
              "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "sweep-v3",
              "basketball-v3"}
ML10_HELD_OUT = {"drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3",
                 "lever-pull-v3"}
REACH = BenchmarkConfig(name="custom", train_tasks=["reach-v3"], test_tasks=["drawer-open-v3"],
                        horizon=150)


def test_ml10_plans_only_its_ten_meta_train_tasks():
    bench = resolve_benchmark(BenchmarkConfig(name="ml10"))
    assert set(bench.train_tasks) == ML10_TRAIN and set(held_out_tasks(bench)) == ML10_HELD_OUT
    jobs = _plan_jobs(bench, 30, (0.1, 0.3), 5, 0)
    assert {j.task for j in jobs} == ML10_TRAIN
    assert len(jobs) == 10 * (2 * 3 + 1)  # per task: 3 chunks per noise level, 1 random chunk
    leaky = Benchmark(name="ml10", train_tasks=bench.train_tasks + ("door-close-v3",),
                      test_tasks=bench.test_tasks, horizon=H, seed=0)
    with pytest.raises(HeldOutTaskError):
        _plan_jobs(leaky, 2, (0.1,), 0, 0)
    pool = SimpleNamespace(benchmark=bench)  # refused before any env is built
    for task in ML10_HELD_OUT:  # the prior-data path (--prior-data expert) refuses them too
        with pytest.raises(HeldOutTaskError):
            collect_prior_episodes(pool, task, 1, 0.1, seed=0)


def test_ml10_manifest_listing_a_held_out_task_is_refused(tmp_path):
    manifest = {"format": "cmrl-dataset", "format_version": 1,
                "benchmark": {"name": "ml10", "train_tasks": [], "test_tasks": [], "horizon": 200,
                              "seed": 0},
                "tasks": {"door-close-v3": {"dataset_id": "cmrl/ml10-door-close-v3-v0"}}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="held-out task of benchmark ml10"):
        load_dataset(tmp_path)


def test_expert_reads_the_goal_that_the_dataset_hides(tmp_path):
    path = generate_dataset(REACH, tmp_path / "reach", episodes=3, noise_levels=(0.0,), workers=1,
                            progress=False, allow_weak_experts=False)
    data, manifest = load_dataset(path)
    d = data["reach-v3"]
    assert not d.obs[:, GOAL_SLICE].any() and not d.next_obs[:, GOAL_SLICE].any()  # hidden
    assert all(d.successes[d.episode_ids == e].any() for e in range(3))
    assert manifest["expert_observation"].startswith("privileged")
    assert manifest["expert_success"] == {"reach-v3": {"0": 1.0}}
    assert manifest["weak_experts"] == [] and manifest["min_expert_success"] == 0.5
    # The same expert reading the hidden observation never gets there: why it must not.
    pool = TaskPool(resolve_benchmark(REACH))
    hidden = collect_prior_episodes(pool, "reach-v3", 3, 0.0, seed=0, privileged=False)
    assert not any(ep.success for ep in hidden)


def test_ml4_experts_do_not_read_the_goal():
    """The ML4 experts ignore the goal slot, so ML4 data is the same with the privileged view as
    it was before it (data/ml4-expert-v1 stays valid)."""
    pool = TaskPool(resolve_benchmark(BenchmarkConfig(horizon=H)))
    for task in ML4_TRAIN:
        a = collect_prior_episodes(pool, task, 1, 0.1, seed=4, privileged=True)[0]
        b = collect_prior_episodes(pool, task, 1, 0.1, seed=4, privileged=False)[0]
        assert np.array_equal(a.actions, b.actions) and np.array_equal(a.obs, b.obs)


def test_a_failing_expert_is_refused_or_flagged(tmp_path, capsys):
    short = BenchmarkConfig(name="custom", train_tasks=["reach-v3"], test_tasks=["drawer-open-v3"],
                            horizon=3)  # no expert reaches anything in 3 steps
    out = tmp_path / "weak"
    with pytest.raises(WeakExpertError,
                       match=r"reach-v3 succeeds in 0% .* noise 0.1 \(horizon 3\)"):
        generate_dataset(short, out, episodes=2, noise_levels=(0.1,), workers=1, progress=False,
                         allow_weak_experts=False)
    assert not (out / MANIFEST_NAME).exists() and not (out / "cmrl").exists()
    path = generate_dataset(short, out, episodes=2, noise_levels=(0.1,), workers=1,
                            progress=False)  # the library default: keep, warn, list
    assert "WARNING" in capsys.readouterr().err
    _, manifest = load_dataset(path)
    assert manifest["weak_experts"] == [{"task": "reach-v3", "noise": 0.1, "success_rate": 0.0}]
    # the command line refuses by default
    from cmrl.cli import main

    code = main(["data", "--benchmark", "custom", "--train-tasks", "reach-v3", "--test-tasks",
                 "drawer-open-v3", "--horizon", "3", "--episodes", "2", "--noise", "0.1",
                 "--random-episodes", "0", "--workers", "1", "--out", str(tmp_path / "cli")])
    assert code == 2 and "refusing" in capsys.readouterr().err
    assert not (tmp_path / "cli" / MANIFEST_NAME).exists()
