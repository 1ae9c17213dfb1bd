"""Relabelling push-v3 and pick-place-v3 rewards for another goal, checked against Meta-World itself:
the same actions replayed from the same reset with only the goal moved (physics ignores the goal)."""

import numpy as np
import pytest

from cmrl.algo.replay import MultiTaskReplay
from cmrl.algo.variation_batches import VariationBatches
from cmrl.envs.experts import run_episode, scripted_policy
from cmrl.envs.metaworld_env import make_scene
from cmrl.envs.relabel import TARGET_RADIUS, Recorded, reward_relabeller


def _episode_and_moved_goal(task, noise, seed):
    """A scripted-expert episode on one variation, and the env's own rewards for the same actions
    under another variation's goal (the object starting where it did)."""
    env, variations = make_scene(task, horizon=150, seed=0)
    rng = np.random.default_rng(seed)
    a, b = rng.choice(len(variations), 2, replace=False)
    ep = run_episode(env, variations[a], scripted_policy(task), noise, rng, "expert")
    env.reset(variations[b])
    goal_b = np.array(env.goal, np.float64)
    env.reset(variations[a])
    env.env._target_pos = goal_b
    moved = []
    for i, action in enumerate(ep.actions):
        obs, reward, _, _ = env.step(action)
        assert np.allclose(obs[:36], ep.next_obs[i][:36], atol=1e-5)  # the goal moved nothing
        moved.append(reward)
    env.close()
    return ep, goal_b, np.asarray(moved)


def _recorded(ep):
    n = len(ep.rewards)
    return Recorded(ep.rewards, np.repeat(ep.goal[None], n, 0), np.repeat(ep.obs[:1], n, 0))


@pytest.mark.parametrize("task, noise, seed, mean_err", [("pick-place-v3", 0.1, 1, 0.1),
                                                         ("pick-place-v3", 0.3, 2, 0.1),
                                                         ("push-v3", 0.1, 3, 1.0),
                                                         ("push-v3", 0.3, 4, 1.0)])
def test_relabelled_rewards_match_the_env_under_the_moved_goal(task, noise, seed, mean_err):
    relabel = reward_relabeller(task)
    assert relabel is not None and relabel.needs_recorded
    ep, goal_b, env_rewards = _episode_and_moved_goal(task, noise, seed)
    assert ep.success  # the expert reached its own goal: the override rows are in the episode
    rec = _recorded(ep)
    start = np.eye(1, len(ep.rewards), dtype=bool)[0]
    rec = rec._replace(terms=relabel.goal_free_terms(ep.next_obs, rec, start))
    # Under its own goal the recorded rewards come back exactly.
    own = relabel(ep.obs, ep.next_obs, ep.goal, rec)
    np.testing.assert_allclose(own, ep.rewards, atol=1e-4)
    new = relabel(ep.obs, ep.next_obs, goal_b, rec)
    assert not np.allclose(new, ep.rewards, atol=0.5)  # the goal moved the rewards
    # Rows whose recorded reward was not overridden give their grasp term back exactly, so
    # relabel exactly; the overridden ones carry the last grasp term seen (close, not exact).
    overridden = np.linalg.norm(ep.next_obs[:, 4:7] - ep.goal, axis=-1) < TARGET_RADIUS
    np.testing.assert_allclose(new[~overridden], env_rewards[~overridden], atol=2e-3)
    assert np.abs(new - env_rewards).mean() < mean_err
    assert np.corrcoef(new, env_rewards)[0, 1] > 0.9


def test_relabelled_rows_in_batches_use_their_episodes_first_observation():
    """Two episodes of one variation in a replay: the batch's relabelling finds each row's episode
    (its object's start) and recomputes the goal-free terms when the buffer changes."""
    task = "pick-place-v3"
    relabel = reward_relabeller(task)
    env, variations = make_scene(task, horizon=60, seed=0)
    rng = np.random.default_rng(0)
    eps = [run_episode(env, variations[v], scripted_policy(task), 0.3, rng, "expert")
           for v in (0, 0, 1)]
    env.close()
    rb = MultiTaskReplay(1, 1000, 39, 4)
    vb = VariationBatches(1, 1, 8, 8, relabellers=[relabel])
    for ep in eps[:2]:
        rb.add(0, ep.obs, ep.actions, ep.rewards, ep.next_obs, groups=0, goal=ep.goal)
    firsts = rb.episode_firsts(0)
    np.testing.assert_array_equal(firsts, np.repeat([0, 60], 60))
    goal = np.array([0.05, 0.8, 0.2], np.float32)
    idx = np.arange(120)
    got = vb._relabel(rb, 0, idx, goal)
    for k, ep in enumerate(eps[:2]):
        rec = _recorded(ep)
        start = np.eye(1, 60, dtype=bool)[0]
        rec = rec._replace(terms=relabel.goal_free_terms(ep.next_obs, rec, start))
        np.testing.assert_allclose(got[60 * k:60 * (k + 1)],
                                   relabel(ep.obs, ep.next_obs, goal, rec), atol=1e-6)
    # A third episode, of another variation, invalidates the cached terms.
    version = int(rb.version[0])
    ep = eps[2]
    rb.add(0, ep.obs, ep.actions, ep.rewards, ep.next_obs, groups=1, goal=ep.goal)
    assert rb.version[0] > version
    own = vb._relabel(rb, 0, np.arange(120, 180), ep.goal)
    np.testing.assert_allclose(own, ep.rewards, atol=1e-4)


def test_relabelling_refuses_rows_without_a_recorded_goal():
    relabel = reward_relabeller("push-v3")
    rb = MultiTaskReplay(1, 100, 39, 4)
    obs = np.zeros((10, 39), np.float32)
    rb.add(0, obs, np.zeros((10, 4), np.float32), np.zeros(10, np.float32), obs, groups=3)
    vb = VariationBatches(1, 1, 8, 8, relabellers=[relabel])
    with pytest.raises(ValueError, match="recorded goal"):
        vb._relabel(rb, 0, np.arange(5), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="goal-free terms"):
        relabel(obs, obs, np.zeros(3), None)


def test_object_tasks_are_relabelled_only_when_the_config_asks():
    from cmrl.algo.trainer import warn_unrelabelled
    from cmrl.config import RunConfig

    assert reward_relabeller("push-v3", recorded=False) is None
    assert reward_relabeller("reach-v3", recorded=False) is not None
    config = RunConfig().updated({"sac.context_relabel": 1.0})
    assert not config.sac.relabel_recorded  # runs before the field existed keep their behaviour
    with pytest.warns(RuntimeWarning, match="sac.relabel_recorded turns on pick-place-v3"):
        warn_unrelabelled(["pick-place-v3"], [reward_relabeller("pick-place-v3", False)], config)
