"""Meta-World ML4 environments (hidden goals, splits, scripted experts, rendering) and goal-text
encoders (MiniLM, CLIP with random weights, validation, compatibility checks)."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from cmrl.config import BenchmarkConfig, ConfigError
from cmrl.envs.metaworld_env import TaskEnv, TaskPool, make_scene
from cmrl.envs.experts import collect_prior_episodes, run_episode, scripted_policy
from cmrl.envs.tasks import (ML4_TEST, ML4_TRAIN, HeldOutTaskError, UnknownTaskError, goal_texts,
                             resolve_benchmark)
from cmrl.nets.text_encoders import (GoalTextError, TextEncoderError, check_compatible,
                                     encoder_for_checkpoint, get_text_encoder, validate_goal_text)

ALL_ML4 = ("drawer-open-v3", "drawer-close-v3", "window-open-v3", "window-close-v3")


@pytest.fixture(scope="module")
def pool():
    return TaskPool(resolve_benchmark(BenchmarkConfig(horizon=150)))


# -- benchmark and envs ----------------------------------------------------------------------------
def test_ml4_split():
    bench = resolve_benchmark(BenchmarkConfig())
    assert bench.name == "ml4"
    assert set(bench.train_tasks) == {"drawer-open-v3", "drawer-close-v3", "window-open-v3"}
    assert len(bench.train_tasks) == 3 and "window-close-v3" not in bench.train_tasks
    assert bench.test_tasks == ("window-close-v3",)
    assert bench.tasks("train") == bench.train_tasks and bench.tasks("test") == bench.test_tasks
    assert bench.split_of("window-close-v3") == "test"
    assert bench.split_of("drawer-open-v3") == "train"
    assert bench.horizon == 200
    with pytest.raises(ValueError):
        bench.tasks("validation")
    for task in ALL_ML4:
        assert goal_texts(task) and all(isinstance(t, str) and t for t in goal_texts(task))


def test_ml4_tasks_build_with_50_variations_and_hidden_goals(pool):
    rng = np.random.default_rng(0)
    for task in ALL_ML4:
        variations = pool.variations(task)
        assert len(variations) == 50
        assert all(v.env_name == task for v in variations)
        env = pool.make_env(task)
        try:
            targets = []
            for v in variations[:3]:
                obs = env.reset(v)
                assert obs.shape == (39,) and obs.dtype == np.float32
                assert np.all(obs[36:39] == 0), f"{task}: goal visible after reset"
                targets.append(np.array(env.env._target_pos, copy=True))
                for _ in range(5):
                    obs, reward, success, done = env.step(rng.uniform(-1, 1, size=4))
                    assert obs.shape == (39,) and np.all(obs[36:39] == 0), f"{task}: goal visible"
                    assert np.isfinite(reward) and isinstance(success, bool) and not done
            # the variations really are different goals, only hidden
            assert max(np.abs(t - targets[0]).max() for t in targets[1:]) > 1e-3
        finally:
            env.close()


def test_fresh_variations_differ_from_training_ones(pool):
    train = pool.variations("drawer-open-v3")
    fresh = pool.variations("drawer-open-v3", fresh=True)
    assert len(fresh) == 50
    assert {v.data for v in train}.isdisjoint({v.data for v in fresh})


def test_reset_needs_a_variation_and_horizon_ends_episode(pool):
    env = pool.make_env("drawer-close-v3")
    try:
        with pytest.raises(RuntimeError):
            env.reset()
        env.reset(pool.variations("drawer-close-v3")[0])
        dones = [env.step(np.zeros(4))[3] for _ in range(150)]
        assert not any(dones[:-1]) and dones[-1]
        env.reset()  # same variation again
        assert env.t == 0
    finally:
        env.close()


def test_collect_prior_on_held_out_task_raises(pool):
    with pytest.raises(HeldOutTaskError, match="window-close-v3"):
        collect_prior_episodes(pool, "window-close-v3", 1, 0.1, seed=0)


def test_collect_prior_on_train_task(pool):
    eps = collect_prior_episodes(pool, "drawer-open-v3", 2, 0.1, seed=0, policy="random")
    assert len(eps) == 2
    for ep in eps:
        assert len(ep) == 150 and ep.obs.shape == (150, 39) and ep.actions.shape == (150, 4)
        assert np.all(np.abs(ep.actions) <= 1.0)
        np.testing.assert_array_equal(ep.obs[1:], ep.next_obs[:-1])
        assert np.all(ep.obs[:, 36:39] == 0)
    with pytest.raises(ValueError):
        collect_prior_episodes(pool, "drawer-open-v3", 1, 0.1, seed=0, policy="oracle")


@pytest.mark.parametrize("task", ALL_ML4)
def test_scripted_expert_solves_task(pool, task):
    """Checks the env, not training: the held-out task is rolled out here only to validate it."""
    env = pool.make_env(task)
    policy = scripted_policy(task)
    variations = pool.variations(task)
    rng = np.random.default_rng(123)
    try:
        successes = [run_episode(env, variations[i * 7], policy, 0.1, rng, "expert").success
                     for i in range(3)]
    finally:
        env.close()
    assert sum(successes) >= 2, f"{task}: scripted expert succeeded in {successes}"


def test_random_policy_rarely_succeeds_at_drawer_open(pool):
    """The success flag is not always on: uniform random actions do not open the drawer."""
    env = pool.make_env("drawer-open-v3")
    try:
        ep = run_episode(env, pool.variations("drawer-open-v3")[0], None, 0.0,
                         np.random.default_rng(0), "random")
    finally:
        env.close()
    assert not ep.success


def test_unknown_task_errors(pool):
    with pytest.raises(UnknownTaskError, match=r"unknown task 'not-a-task-v3'; known tasks: .*drawer-open-v3"):
        resolve_benchmark(BenchmarkConfig(name="custom", train_tasks=["not-a-task-v3"],
                                          test_tasks=["window-close-v3"]))
    with pytest.raises(UnknownTaskError, match="reach-v3"):
        pool.variations("reach-v3")
    with pytest.raises(UnknownTaskError, match="bogus-v3"):
        make_scene("bogus-v3")
    with pytest.raises(UnknownTaskError) as info:
        resolve_benchmark(BenchmarkConfig()).split_of("reach-v3")
    assert info.value.task == "reach-v3" and "window-close-v3" in str(info.value)


def test_custom_benchmark_validation():
    with pytest.raises(ConfigError, match="window-close-v3"):
        resolve_benchmark(BenchmarkConfig(name="custom", train_tasks=["drawer-open-v3", "window-close-v3"],
                                          test_tasks=["window-close-v3"]))
    with pytest.raises(ConfigError):
        resolve_benchmark(BenchmarkConfig(name="custom", train_tasks=[], test_tasks=["window-close-v3"]))
    with pytest.raises(ConfigError):
        resolve_benchmark(BenchmarkConfig(name="ml7"))
    with pytest.raises(ConfigError):
        resolve_benchmark(BenchmarkConfig(horizon=501))
    ok = resolve_benchmark(BenchmarkConfig(name="custom", train_tasks=["reach-v3"], test_tasks=["push-v3"]))
    assert ok.train_tasks == ("reach-v3",) and ok.test_tasks == ("push-v3",)


# -- rendering -------------------------------------------------------------------------------------
def test_render_corner_camera_is_upright_rotation(pool):
    task = "drawer-open-v3"
    env = TaskEnv(pool.env_class(task), task, 150, render=True, camera="corner", size=64)
    try:
        env.reset(pool.variations(task)[0])
        first = env.render()
        assert first.dtype == np.uint8 and first.shape == (64, 64, 3)
        assert first.flags["C_CONTIGUOUS"]
        assert first.std() > 1.0, "frame is constant"
        raw = env.env.render()
        np.testing.assert_array_equal(first, raw[::-1, ::-1])
        assert not np.array_equal(first, raw)
        policy = scripted_policy(task)
        obs = env.reset()
        for _ in range(80):  # the scripted arm moves to the handle and pulls the drawer
            obs, *_ = env.step(np.clip(policy.get_action(obs.astype(np.float64)), -1, 1))
        later = env.render()
        assert later.shape == (64, 64, 3)
        assert np.abs(later.astype(int) - first.astype(int)).sum() > 0
        assert (later != first).any(axis=-1).mean() > 0.01
    finally:
        env.close()


def test_render_non_corner_camera_is_not_flipped(pool):
    task = "window-close-v3"
    env = TaskEnv(pool.env_class(task), task, 150, render=True, camera="topview", size=48)
    try:
        env.reset(pool.variations(task)[0])
        frame = env.render()
        assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, env.env.render())
    finally:
        env.close()


def test_render_errors(pool):
    with pytest.raises(ValueError, match="camera"):
        TaskEnv(pool.env_class("drawer-open-v3"), "drawer-open-v3", 10, render=True, camera="nope")
    env = pool.make_env("drawer-open-v3")
    try:
        with pytest.raises(RuntimeError, match="render"):
            env.render()
    finally:
        env.close()


# -- text ------------------------------------------------------------------------------------------
def test_minilm_semantics_and_unit_norm(minilm):
    assert minilm.name == "minilm" and minilm.dim == 384
    v = minilm.encode(["close the window", "shut the window", "open the drawer"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.1
    # paraphrases of a task are nearer each other than another task's
    drawer = minilm.encode(list(goal_texts("drawer-open-v3")))
    window = minilm.encode(list(goal_texts("window-close-v3")))
    assert (drawer @ drawer.T).mean() > (drawer @ window.T).mean()


def test_minilm_encode_is_cached_and_normalises_whitespace(minilm, monkeypatch):
    a = minilm.encode("open the window")
    assert a.shape == (384,)
    calls = []
    original = minilm._encode

    def counting(texts):
        calls.append(list(texts))
        return original(texts)

    monkeypatch.setattr(minilm, "_encode", counting)
    b = minilm.encode("open the window")
    c = minilm.encode("  open   the\twindow ")
    assert calls == []  # both served from the cache
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    batch = minilm.encode(["open the window", "a brand new sentence for the cache"])
    assert calls == [["a brand new sentence for the cache"]]
    np.testing.assert_array_equal(batch[0], a)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=-1), 1.0, atol=1e-5)
    # cached vectors are not aliased to what the caller gets back
    b[:] = 0
    np.testing.assert_array_equal(minilm.encode("open the window"), a)


def test_minilm_batch_equals_single(minilm):
    texts = ["push the drawer shut", "slide the window open sideways and then stop"]
    batch = minilm.encode(texts)
    for t, row in zip(texts, batch):
        np.testing.assert_allclose(minilm.encode(t), row, atol=1e-6)


@pytest.mark.parametrize("bad", ["", "   ", "\n\t ", "x" * 10_000, None, 42, ["a list"]])
def test_validate_goal_text_rejects(bad, minilm):
    with pytest.raises(GoalTextError):
        validate_goal_text(bad)
    with pytest.raises(GoalTextError):
        minilm.encode(bad if isinstance(bad, str) else [bad])


def test_validate_goal_text_accepts_and_normalises():
    assert validate_goal_text("  close   the\nwindow ") == "close the window"
    assert validate_goal_text("x" * 500) == "x" * 500


def test_clip_random_weights_offline_without_torchvision():
    enc = get_text_encoder("clip", clip_pretrained="none", verbose=False)
    assert enc.dim == 512 and enc.name == "clip-random"
    v = enc.encode(["close the window", "open the drawer"])
    assert v.shape == (2, 512) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, atol=1e-5)
    assert np.abs(v[0] - v[1]).max() > 1e-4
    assert importlib.util.find_spec("torchvision") is None  # the stand-ins were removed
    assert not any(m == "torchvision" or m.startswith("torchvision.") for m in sys.modules)
    assert get_text_encoder("clip-random", verbose=False) is enc  # shared per process
    assert encoder_for_checkpoint({"name": "clip-random", "dim": 512}) is enc


def test_check_compatible(minilm):
    check_compatible(minilm, {"name": "minilm", "dim": 384})  # no error
    with pytest.raises(TextEncoderError, match="384"):
        check_compatible(minilm, {"name": "minilm", "dim": 512})
    with pytest.raises(TextEncoderError, match="clip"):
        check_compatible(minilm, {"name": "clip", "dim": 384})
    with pytest.raises(TextEncoderError):
        encoder_for_checkpoint({"name": "minilm", "dim": 512})
    with pytest.raises(TextEncoderError, match="word2vec"):
        encoder_for_checkpoint({"name": "word2vec", "dim": 300})
    with pytest.raises(TextEncoderError, match="unknown text encoder"):
        get_text_encoder("bert")
    assert get_text_encoder("minilm", verbose=False) is minilm


def test_ml4_constants():
    assert ML4_TRAIN == ("drawer-open-v3", "drawer-close-v3", "window-open-v3")
    assert ML4_TEST == ("window-close-v3",)


def test_embedding_table_gives_the_real_encoders_vectors_bit_for_bit(minilm, tmp_path, monkeypatch):
    """A machine without MiniLM's weights trains on a table the real MiniLM wrote: same vectors,
    same name and width (checkpoints made with it load with the real encoder), and a clear error
    for a text the table lacks or a file that is not a table."""
    from cmrl.nets import text_encoders as te

    monkeypatch.setattr(te, "_SHARED", dict(te._SHARED))  # the registry comes back after the test
    texts = list(goal_texts("drawer-open-v3")) + ["close the window"]
    path = te.save_embedding_table(minilm, texts + ["  close   the window "], tmp_path / "t.npz")
    table = te.use_embedding_table(path)
    assert te.get_text_encoder("minilm", verbose=False) is table
    assert te.encoder_for_checkpoint({"name": "minilm", "dim": 384}) is table
    assert (table.name, table.dim) == ("minilm", 384)
    np.testing.assert_array_equal(table.encode(texts), minilm.encode(texts))
    np.testing.assert_array_equal(table.encode(" close the   window"), minilm.encode("close the window"))
    with pytest.raises(te.TextEncoderError, match="not in the precomputed minilm table"):
        table.encode(["open the drawer", "a sentence nobody embedded"])
    with pytest.raises(GoalTextError):
        table.encode("")
    (tmp_path / "bad.npz").write_bytes(b"not a table")
    with pytest.raises(te.TextEncoderError, match="cannot read the embedding table"):
        te.use_embedding_table(tmp_path / "bad.npz")
