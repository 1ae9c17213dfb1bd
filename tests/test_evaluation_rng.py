"""`rollout` draws z and actions from its own torch.Generator: one seed gives one rollout, whatever
other rollouts run interleaved with it or in other threads (the app runs several at once), and the
global torch RNG is neither read nor changed."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from cmrl.algo.agent import MetaAgent
from cmrl.envs.metaworld_env import make_scene
from cmrl.algo.evaluation import rollout
from tests.conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config

TASK, HORIZON, TEXT_DIM = "drawer-open-v3", 8, 16


@pytest.fixture(scope="module", params=["pearl", "cmrl"])
def agent(request):
    torch.manual_seed(0)
    return MetaAgent(tiny_config(request.param), OBS_DIM, ACT_DIM, TEXT_DIM, ML4_TRAIN).eval()


def _steps(agent, seed):
    """The rollout's records as (action, z mean) arrays, one per step (2 adaptation episodes with
    sampled z and actions, then 1 deterministic one)."""
    env, variations = make_scene(TASK, horizon=HORIZON)
    goal = np.linspace(-1, 1, TEXT_DIM, dtype=np.float32) if agent.uses_text else None
    try:
        for r in rollout(agent, env, variations[0], goal, adaptation_episodes=2, eval_episodes=1,
                         seed=seed):
            yield np.concatenate([r.action, r.z_mean])
    finally:
        env.close()


def _trace(agent, seed) -> np.ndarray:
    return np.stack(list(_steps(agent, seed)))


def test_same_seed_same_rollout_interleaved(agent):
    alone = _trace(agent, 0)
    assert alone.shape[0] == 3 * HORIZON
    a, b = [], []
    for x, y in zip(_steps(agent, 0), _steps(agent, 1)):  # step by step, alternating
        a.append(x)
        b.append(y)
    np.testing.assert_array_equal(np.stack(a), alone)
    assert not np.array_equal(np.stack(b), alone)  # another seed samples differently
    np.testing.assert_array_equal(np.stack(b), _trace(agent, 1))


def test_same_seed_same_rollout_in_threads(agent):
    expected = {0: _trace(agent, 0), 1: _trace(agent, 1)}
    seeds = [0, 1, 0, 1]
    out: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(seeds))

    def run(i):
        start.wait()
        out[i] = _trace(agent, seeds[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, seed in enumerate(seeds):
        np.testing.assert_array_equal(out[i], expected[seed])


def test_global_rng_untouched(agent):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    steps = _steps(agent, 0)
    first = [next(steps) for _ in range(HORIZON + 2)]  # suspended mid-rollout, in episode 2
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)  # whatever the global RNG does meanwhile, the rollout goes on the same
    state = torch.get_rng_state()
    rest = list(steps)
    np.testing.assert_array_equal(np.stack(first + rest), _trace(agent, 0))
    assert torch.equal(torch.get_rng_state(), state)
