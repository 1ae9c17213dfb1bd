"""PEARL's task is a goal variation: the point robot, variation-tagged data, grouped batches,
relabelled contexts, and the collector's posterior rounds."""

import numpy as np
import pytest
import torch

from cmrl.algo.collector import _own_context
from cmrl.algo.replay import MultiTaskReplay
from cmrl.algo.variation_batches import VariationBatches
from cmrl.config import BenchmarkConfig, ConfigError, RunConfig
from cmrl.envs import point_robot
from cmrl.envs.experts import collect_prior_episodes, run_episode, scripted_policy
from cmrl.envs.metaworld_env import TaskPool, make_scene
from cmrl.envs.relabel import reward_relabeller
from cmrl.envs.tasks import resolve_benchmark


def point_pool():
    return TaskPool(resolve_benchmark(BenchmarkConfig(name="point")))


def test_point_benchmark_hides_the_goal_and_holds_out_goals():
    bench = resolve_benchmark(BenchmarkConfig(name="point", horizon=200))
    assert bench.horizon == point_robot.HORIZON and bench.holds_out_variations
    pool = TaskPool(bench)
    assert (pool.obs_dim, pool.act_dim) == (2, 2)
    train = pool.variations(point_robot.TASK, "train")
    test = pool.variations(point_robot.TASK, "test")
    fresh = pool.variations(point_robot.TASK, "train", fresh=True)
    goals = {v.goal for v in train}
    assert len(train) == point_robot.NUM_TRAIN_GOALS and not goals & {v.goal for v in test}
    assert not goals & {v.goal for v in fresh}
    for v in train + test:
        assert abs(np.hypot(*v.goal) - 1.0) < 1e-9 and v.goal[1] >= 0
    env = pool.make_env(point_robot.TASK, "train")
    obs = env.reset(train[0])
    assert obs.shape == (2,) and np.all(obs == 0)  # the observation says nothing of the goal


def test_point_dynamics_reward_success_and_expert():
    pool = point_pool()
    env = pool.make_env(point_robot.TASK, "train", render=True)
    v = pool.variations(point_robot.TASK, "train")[3]
    env.reset(v)
    obs, r, success, done = env.step(np.array([5.0, 0.0]))  # clipped to 1 -> moves 0.1
    assert np.allclose(obs, [0.1, 0.0]) and not done
    assert r == pytest.approx(-np.linalg.norm(np.array([0.1, 0.0]) - np.asarray(v.goal)))
    frame = env.render(belief=np.array([0.0, 1.0]))
    assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8 and frame.std() > 0
    rng = np.random.default_rng(0)
    episodes = [run_episode(env, u, scripted_policy(point_robot.TASK), 0.1, rng, "expert")
                for u in pool.variations(point_robot.TASK, "train")[:10]]
    assert np.mean([ep.success for ep in episodes]) >= 0.9
    assert len(episodes[0]) == point_robot.HORIZON
    random_eps = [run_episode(env, u, None, 0.0, rng, "random")
                  for u in pool.variations(point_robot.TASK, "train")[:10]]
    assert np.mean([ep.success for ep in random_eps]) <= 0.3


def test_point_relabelling_reproduces_the_env_reward():
    pool = point_pool()
    eps = collect_prior_episodes(pool, point_robot.TASK, 3, 0.3, seed=1)
    relabel = reward_relabeller(point_robot.TASK)
    for ep in eps:
        assert ep.variation >= 0 and ep.goal is not None
        assert np.allclose(relabel(ep.obs, ep.next_obs, ep.goal), ep.rewards, atol=1e-5)
    # under another goal the rewards differ
    assert not np.allclose(relabel(eps[0].obs, eps[0].next_obs, -eps[0].goal), eps[0].rewards)


def test_reach_relabelling_tracks_metaworld_reward():
    pool = TaskPool(resolve_benchmark(BenchmarkConfig(name="ml1:reach-v3", horizon=60)))
    relabel = reward_relabeller("reach-v3")
    eps = (collect_prior_episodes(pool, "reach-v3", 2, 0.3, seed=0)
           + collect_prior_episodes(pool, "reach-v3", 1, 0.0, seed=0, policy="random"))
    for ep in eps:
        r = relabel(ep.obs, ep.next_obs, ep.goal)
        assert np.corrcoef(r, ep.rewards)[0, 1] > 0.95
        assert np.abs(r - ep.rewards).max() < 1.5
    assert reward_relabeller("door-open-v3") is None  # no relabeller: its goal is not a position


def _grouped_replay():
    rb = MultiTaskReplay(2, 100, 2, 2)
    for task in range(2):
        for g in range(3):
            n = 10
            # obs encode (task, group) so a test can tell where each row came from
            obs = np.full((n, 2), [task, g], np.float32)
            rb.add(task, obs, np.zeros((n, 2), np.float32), np.full(n, g, np.float32), obs,
                   groups=g, goal=np.array([g, -g], np.float32))
    return rb


def test_group_index_and_state_round_trip():
    rb = _grouped_replay()
    idx = rb.group_index(1)
    assert sorted(idx) == [0, 1, 2] and all(len(v) == 10 for v in idx.values())
    assert np.all(rb.obs[1, idx[2], 1] == 2)
    other = MultiTaskReplay(2, 100, 2, 2)
    other.load_state_dict(rb.state_dict("r"), "r")
    assert sorted(other.group_index(0)) == [0, 1, 2]
    assert np.allclose(other.group_goals[0][2], [2, -2])


def test_variation_batches_keep_context_and_rows_on_one_variation():
    rb = _grouped_replay()
    vb = VariationBatches(2, groups_per_task=4, batch_size=32, context_size=6)
    batch, context = vb.sample(rb, [(rb, vb.rows)], np.random.default_rng(0))
    assert batch["obs"].shape == (8, 8, 2) and context.shape == (8, 6, 2 + 2 + 1 + 2)
    assert list(vb.row_task) == [0, 0, 0, 0, 1, 1, 1, 1]
    for r in range(8):
        task = vb.row_task[r]
        rows_groups = set(batch["obs"][r, :, 1].tolist())
        ctx_groups = set(context[r, :, 1].tolist())
        assert len(rows_groups) == 1 and rows_groups == ctx_groups
        assert set(batch["obs"][r, :, 0].tolist()) == {task}


def test_tasks_without_a_relabeller_can_take_contexts_from_every_variation():
    rb = _grouped_replay()
    # task 0 has a relabeller, task 1 none
    vb = VariationBatches(2, groups_per_task=4, batch_size=32, context_size=60,
                          relabellers=[reward_relabeller(point_robot.TASK), None],
                          unrelabelled_from_task=True)
    batch, context = vb.sample(rb, [(rb, vb.rows)], np.random.default_rng(0))
    for r in range(8):
        rows_groups = set(batch["obs"][r, :, 1].tolist())
        ctx_groups = set(context[r, :, 1].tolist())
        assert len(rows_groups) == 1  # the RL rows stay on one variation
        assert set(context[r, :, 0].tolist()) == {vb.row_task[r]}
        if vb.row_task[r] == 0:
            assert ctx_groups == rows_groups
        else:
            assert ctx_groups == {0.0, 1.0, 2.0}  # 60 draws over 30 rows: all three variations
    cfg = RunConfig().updated({"sac.unrelabelled_context_from": "task"})
    assert cfg.sac.unrelabelled_context_from == "task"
    with pytest.raises(ConfigError, match="unrelabelled_context_from"):
        RunConfig().updated({"sac.unrelabelled_context_from": "episode"}).validate()


def test_relabelled_contexts_carry_this_variations_rewards():
    rb = MultiTaskReplay(1, 200, 2, 2)
    rng = np.random.default_rng(0)
    goals = [np.array([1.0, 0.0]), np.array([-1.0, 0.0])]
    for g, goal in enumerate(goals):
        nxt = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
        rb.add(0, nxt, np.zeros((50, 2), np.float32), point_robot.relabel_rewards(nxt, goal), nxt,
               groups=g, goal=goal)
    vb = VariationBatches(1, 2, 16, 40, relabel_fraction=0.5,
                          relabellers=[reward_relabeller(point_robot.TASK)])
    groups = vb.pick_groups(rb, np.random.default_rng(1))
    ctx = vb._context(rb, groups, np.random.default_rng(1))
    for r, g in enumerate(groups):
        nxt, rew = ctx[r, :, -2:], ctx[r, :, 4]
        # every row's reward is this variation's, whichever variation it was collected on
        assert np.allclose(rew, point_robot.relabel_rewards(nxt, goals[g]), atol=1e-5)
        own = {tuple(x) for x in rb.next_obs[0, rb.group_index(0)[g]]}
        mixed = [tuple(x) not in own for x in nxt]
        assert 0 < sum(mixed) < len(mixed)


def _two_variations_apart() -> tuple[MultiTaskReplay, list[np.ndarray]]:
    """One task, two goal variations whose transitions lie apart in space (x < 1.5 and x > 1.5)."""
    rb = MultiTaskReplay(1, 200, 2, 2)
    rng = np.random.default_rng(0)
    goals = [np.array([1.0, 0.0]), np.array([-1.0, 0.0])]
    for g, goal in enumerate(goals):
        nxt = (rng.uniform(-1, 1, (50, 2)) + 3 * g).astype(np.float32)
        rb.add(0, nxt, np.zeros((50, 2), np.float32), point_robot.relabel_rewards(nxt, goal), nxt,
               groups=g, goal=goal)
    return rb, goals


def _sample_apart(**fractions) -> tuple[dict, list[int], list[np.ndarray]]:
    """A batch of `_two_variations_apart` (relabelling `fractions`), its groups and their goals."""
    rb, goals = _two_variations_apart()
    vb = VariationBatches(1, 2, 40, 8, relabellers=[reward_relabeller(point_robot.TASK)],
                          **fractions)
    batch, _ = vb.sample(rb, [(rb, vb.rows)], np.random.default_rng(3))
    return batch, vb.pick_groups(rb, np.random.default_rng(3)), goals


def test_relabelled_rl_rows_carry_this_variations_rewards():
    batch, groups, goals = _sample_apart(rl_relabel_fraction=0.5)
    for r, g in enumerate(groups):
        nxt, rew = batch["next_obs"][r].numpy(), batch["rewards"][r].numpy()
        assert np.allclose(rew, point_robot.relabel_rewards(nxt, goals[g]), atol=1e-5)
        # the first half may come from either variation; the second half is this one's own
        own = (nxt[:, 0] > 1.5) == bool(g)
        assert own[10:].all() and not own[:10].all()
    batch, _, _ = _sample_apart()
    for r, g in enumerate(groups):
        assert (((batch["next_obs"][r, :, 0] > 1.5).numpy()) == bool(g)).all()


def test_decoder_rows_are_relabelled_and_the_rl_rows_left_alone():
    batch, groups, goals = _sample_apart(decoder_relabel_fraction=1.0)
    assert {"decoder_obs", "decoder_actions", "decoder_rewards", "decoder_next_obs"} <= set(batch)
    for r, g in enumerate(groups):
        # RL rows: this variation's own; decoder rows: from either, rewarded for this goal
        assert (((batch["next_obs"][r, :, 0] > 1.5).numpy()) == bool(g)).all()
        nxt, rew = batch["decoder_next_obs"][r].numpy(), batch["decoder_rewards"][r].numpy()
        assert np.allclose(rew, point_robot.relabel_rewards(nxt, goals[g]), atol=1e-5)
        assert not (((nxt[:, 0] > 1.5)) == bool(g)).all()
    assert not any(k.startswith("decoder_") for k in _sample_apart()[0])


def test_goal_positions_ride_with_their_variations_rows():
    batch, groups, goals = _sample_apart(goal_dim=2)
    assert batch["goal_pos"].shape == (2, 20, 2)
    for r, g in enumerate(groups):
        assert np.allclose(batch["goal_pos"][r].numpy(), goals[g])
    assert "goal_pos" not in _sample_apart()[0]  # off unless goal supervision asks for it
    # a variation without a recorded goal gets NaN (the loss skips it)
    rb = MultiTaskReplay(1, 50, 2, 2)
    rb.add(0, np.zeros((20, 2), np.float32), np.zeros((20, 2), np.float32),
           np.zeros(20, np.float32), np.zeros((20, 2), np.float32), groups=0)
    batch, _ = VariationBatches(1, 1, 8, 4, goal_dim=2).sample(rb, [(rb, 8)],
                                                                np.random.default_rng(0))
    assert torch.isnan(batch["goal_pos"]).all()


def test_own_context_takes_each_envs_own_transitions():
    from cmrl.algo.collector import RoundResult

    E, H = 3, 5
    obs = np.arange(E, dtype=np.float32)[:, None, None] * np.ones((E, H, 2), np.float32)
    r = RoundResult(obs, np.zeros((E, H, 2), np.float32), np.zeros((E, H), np.float32), obs,
                    np.zeros(E, bool), np.zeros(E), np.zeros(E, int), np.arange(E),
                    np.zeros((E, 2), np.float32))
    ctx = _own_context(r, 7, np.random.default_rng(0))
    assert ctx.shape == (E, 7, 7)
    for e in range(E):
        assert np.all(ctx[e, :, 0] == e)


def test_config_checks_the_new_fields():
    with pytest.raises(ConfigError):
        RunConfig().updated({"sac.context_relabel": 1.5})
    with pytest.raises(ConfigError):
        RunConfig().updated({"sac.rl_relabel": -0.1})
    with pytest.raises(ConfigError):
        RunConfig().updated({"sac.meta_batch": 0})
    with pytest.raises(ConfigError):
        RunConfig().updated({"sac.context_from": "episode"})
    assert RunConfig().sac.context_from == "variation"


def test_point_scene_for_the_app():
    env, variations = make_scene(point_robot.TASK, horizon=200, seed=0)
    assert env.horizon == point_robot.HORIZON and len(variations) == point_robot.NUM_TRAIN_GOALS
    torch.manual_seed(0)


def test_rollout_refuses_a_scene_of_other_dimensions():
    from cmrl.algo.trained_agent import load_agent

    agent = load_agent("checkpoints/ml4/pearl")
    with pytest.raises(ValueError, match="2-d observations"):
        next(agent.rollout(point_robot.TASK))


def test_goal_probe_file_is_checked(tmp_path):
    from cmrl.runs.goal_probe import GOAL_PROBE_FILE, fit_goal_probe, load_goal_probe

    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 3))
    goals = z[:, :2] * 0.5 + 0.1
    w = fit_goal_probe(z, goals)
    (tmp_path / GOAL_PROBE_FILE).write_text(__import__("json").dumps({"weights": w.tolist()}))
    probe = load_goal_probe(tmp_path, 3)
    assert np.allclose(probe(z[0]), goals[0], atol=1e-2)
    assert load_goal_probe(tmp_path, 5) is None  # a probe for another z size is not used
    (tmp_path / GOAL_PROBE_FILE).write_text("{not json")
    assert load_goal_probe(tmp_path, 3) is None
    outside = tmp_path.parent / "elsewhere.json"
    outside.write_text(__import__("json").dumps({"weights": w.tolist()}))
    (tmp_path / GOAL_PROBE_FILE).unlink()
    (tmp_path / GOAL_PROBE_FILE).symlink_to(outside)
    assert load_goal_probe(tmp_path, 3) is None  # a link out of the run folder is not followed


def test_point_frames_show_the_believed_goal():
    env = point_pool().make_env(point_robot.TASK, "train", render=True)
    env.reset(point_pool().variations(point_robot.TASK, "train")[0])
    plain, marked = env.render(), env.render(belief=np.array([-0.8, 0.4]))
    diff = np.abs(plain.astype(int) - marked.astype(int)).sum(-1) > 0
    ys, xs = np.nonzero(diff)
    # the ring sits where the belief is: x = -0.8 in a window [-1.3, 1.3] of 224 px
    assert diff.any() and abs(xs.mean() - (-0.8 + 1.3) / 2.6 * 224) < 6


def test_metaworld_frames_show_the_believed_goal():
    """An orange sphere where the belief is: it changes the frame there and nowhere when absent."""
    from cmrl.envs.metaworld_env import make_scene

    env, variations = make_scene("reach-v3", render=True, size=224)
    try:
        env.reset(variations[0])
        plain, again = env.render(), env.render()
        marked = env.render(belief=env.goal + np.array([0.0, 0.0, 0.15]))
        after = env.render()  # the marker is drawn in one frame only
    finally:
        env.close()
    assert np.array_equal(plain, again) and np.array_equal(plain, after)
    diff = np.abs(plain.astype(int) - marked.astype(int)).sum(-1) > 30
    assert 20 < diff.sum() < 2000  # a small sphere, not the whole frame
    orange = marked[diff].mean(0)
    assert orange[0] > 150 and orange[0] > orange[2] + 60


def test_context_windows_are_runs_of_consecutive_transitions():
    rb = MultiTaskReplay(1, 400, 2, 2)
    for g in range(4):
        n = 60
        # obs[:, 0] counts the transitions of each variation in the order they were added
        obs = np.stack([np.arange(n), np.full(n, g)], -1).astype(np.float32)
        rb.add(0, obs, np.zeros((n, 2), np.float32), np.zeros(n, np.float32), obs, groups=g,
               goal=np.array([g, 0.0], np.float32))
    vb = VariationBatches(1, 2, 8, context_size=30, context_window=10)
    groups = vb.pick_groups(rb, np.random.default_rng(0))
    ctx = vb._context(rb, groups, np.random.default_rng(0))
    for r, g in enumerate(groups):
        counts = ctx[r, :, 0].reshape(3, 10)
        assert np.all(np.diff(counts, axis=1) == 1)  # three runs of ten in a row
        assert np.all(ctx[r, :, 1] == g)
    plain = VariationBatches(1, 2, 8, context_size=30)._context(rb, groups, np.random.default_rng(0))
    assert not np.all(np.diff(plain[0, :, 0].reshape(3, 10), axis=1) == 1)


def test_windows_of_relabelled_contexts_come_from_any_variation_in_runs():
    rb = MultiTaskReplay(1, 400, 2, 2)
    for g, goal in enumerate([np.array([1.0, 0.0]), np.array([-1.0, 0.0])]):
        # obs[:, 0] is the transition's place in the buffer
        obs = np.stack([g * 100 + np.arange(100), np.full(100, g)], -1).astype(np.float32)
        rb.add(0, obs, np.zeros((100, 2), np.float32), np.zeros(100, np.float32), obs, groups=g,
               goal=goal)
    vb = VariationBatches(1, 2, 8, context_size=40, relabel_fraction=1.0, context_window=20,
                          relabellers=[reward_relabeller(point_robot.TASK)])
    groups = vb.pick_groups(rb, np.random.default_rng(3))
    ctx = vb._context(rb, groups, np.random.default_rng(3))
    for r, g in enumerate(groups):
        goal = rb.group_goals[0][g]
        assert np.allclose(ctx[r, :, 4], point_robot.relabel_rewards(ctx[r, :, -2:], goal))
        # the relabelled rows are shuffled, but they are two runs of twenty consecutive ones
        places = np.sort(ctx[r, :, 0])
        assert np.sum(np.diff(places) != 1) <= 1


def test_config_checks_the_encoder_fields():
    with pytest.raises(ConfigError, match="goal_supervision"):
        RunConfig().updated({"sac.goal_supervision": -1.0})
    with pytest.raises(ConfigError, match="goal_supervision"):
        RunConfig().updated({"sac.goal_supervision": 1.0, "sac.context_from": "task"})
    with pytest.raises(ConfigError, match="decoder_relabel"):
        RunConfig().updated({"sac.decoder_relabel": 1.0})  # no decoder to relabel for
    with pytest.raises(ConfigError, match="decoder_relabel"):
        RunConfig().updated({"sac.reward_decoder": 1.0, "sac.decoder_relabel": 1.5})
    with pytest.raises(ConfigError, match="context_from"):
        RunConfig().updated({"sac.reward_decoder": 1.0, "sac.decoder_relabel": 0.5,
                             "sac.context_from": "task"})
    with pytest.raises(ConfigError, match="context_window"):
        RunConfig().updated({"sac.context_window": -1})
    with pytest.raises(ConfigError, match="encoder_steps"):
        RunConfig().updated({"sac.encoder_steps": -5})
    with pytest.raises(ConfigError, match="reward_decoder"):
        RunConfig().updated({"sac.reward_decoder": -1.0})
    with pytest.raises(ConfigError, match="only the KL"):
        RunConfig().updated({"sac.encoder_from_critic": False})
    RunConfig().updated({"sac.encoder_from_critic": False, "sac.reward_decoder": 1.0})


def test_relabelling_a_task_without_a_relabeller_warns():
    from cmrl.algo.trainer import warn_unrelabelled

    tasks = ["reach-v3", "door-open-v3"]
    relabellers = [reward_relabeller(t) for t in tasks]
    assert relabellers[0] is not None and relabellers[1] is None
    with pytest.warns(RuntimeWarning, match="context_relabel will do nothing on door-open-v3"):
        warn_unrelabelled(tasks, relabellers, RunConfig().updated({"sac.context_relabel": 1.0}))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unrelabelled(tasks, relabellers, RunConfig())  # nothing asked: silent
        warn_unrelabelled(tasks[:1], relabellers[:1], RunConfig().updated({"sac.rl_relabel": 0.5}))


def test_jittered_goals_are_relabelled_consistently_and_rl_rows_keep_theirs():
    rb, goals = _two_variations_apart()
    vb = VariationBatches(1, 2, 40, 8, relabel_fraction=1.0, decoder_relabel_fraction=1.0,
                          relabellers=[reward_relabeller(point_robot.TASK)], goal_dim=2,
                          goal_jitter=0.3)
    batch, context = vb.sample(rb, [(rb, vb.rows)], np.random.default_rng(3))
    groups = vb.pick_groups(rb, np.random.default_rng(3))
    for r, g in enumerate(groups):
        moved = batch["goal_pos"][r, 0].numpy()
        assert np.allclose(batch["goal_pos"][r].numpy(), moved)  # one goal per group
        assert 1e-3 < np.linalg.norm(moved - goals[g]) < 2.0
        # context and decoder rows are rewarded for the moved goal, not the recorded one
        ctx = context[r].numpy()
        assert np.allclose(ctx[:, 4], point_robot.relabel_rewards(ctx[:, -2:], moved), atol=1e-5)
        nxt, rew = batch["decoder_next_obs"][r].numpy(), batch["decoder_rewards"][r].numpy()
        assert np.allclose(rew, point_robot.relabel_rewards(nxt, moved), atol=1e-5)
        # the RL rows are the variation's own, with the rewards it recorded
        nxt, rew = batch["next_obs"][r].numpy(), batch["rewards"][r].numpy()
        assert np.allclose(rew, point_robot.relabel_rewards(nxt, goals[g]), atol=1e-5)
    # each draw moves the goal anew; with no jitter the recorded goal is used
    again, _ = vb.sample(rb, [(rb, vb.rows)], np.random.default_rng(4))
    assert not np.allclose(again["goal_pos"][:, 0].numpy(), batch["goal_pos"][:, 0].numpy())
    plain = VariationBatches(1, 2, 40, 8, relabel_fraction=1.0,
                             relabellers=[reward_relabeller(point_robot.TASK)], goal_dim=2)
    b0, _ = plain.sample(rb, [(rb, plain.rows)], np.random.default_rng(3))
    for r, g in enumerate(groups):
        assert np.allclose(b0["goal_pos"][r].numpy(), goals[g])


def test_goal_jitter_needs_every_context_row_relabelled():
    base = {"sac.context_from": "variation", "sac.context_relabel": 1.0, "sac.goal_jitter": 0.02}
    RunConfig().updated(base).validate()
    with pytest.raises(ConfigError, match="goal_jitter"):
        RunConfig().updated({**base, "sac.context_relabel": 0.5}).validate()
    with pytest.raises(ConfigError, match="goal_jitter"):
        RunConfig().updated({**base, "sac.reward_decoder": 10.0, "sac.decoder_relabel": 0.5}).validate()
    with pytest.raises(ConfigError, match="goal_jitter"):
        RunConfig().updated({**base, "sac.goal_jitter": -0.1}).validate()
