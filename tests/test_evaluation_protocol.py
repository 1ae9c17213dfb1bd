"""The evaluator's episode layout: a zero-shot episode (prior mean, deterministic, transitions not
kept) before the adaptation and evaluation episodes, recorded per episode, without changing them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrl.algo.agent import MetaAgent
from cmrl.config import BenchmarkConfig
from cmrl.envs.metaworld_env import TaskPool
from cmrl.algo.evaluation import evaluate_task
from cmrl.envs.tasks import resolve_benchmark
from tests.conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config


class _Encoder:
    dim = 16

    def encode(self, texts):
        single = isinstance(texts, str)
        items = [texts] if single else texts
        out = np.stack([np.random.default_rng(len(t)).normal(size=16).astype(np.float32)
                        for t in items])
        return out[0] if single else out


@pytest.fixture(scope="module")
def pool():
    return TaskPool(resolve_benchmark(BenchmarkConfig(horizon=6)))


@pytest.mark.parametrize("kind", ["cmrl", "pearl", "sm"])
def test_zero_shot_episode_is_recorded_and_changes_nothing_else(pool, kind):
    torch.manual_seed(0)
    agent = MetaAgent(tiny_config(kind), OBS_DIM, ACT_DIM, 16, ML4_TRAIN).eval()
    kw = dict(num_variations=2, adaptation_episodes=2, eval_episodes=1, seed=3)
    with_zs = evaluate_task(agent, pool, "window-close-v3", "test", _Encoder(), zero_shot=True, **kw)
    without = evaluate_task(agent, pool, "window-close-v3", "test", _Encoder(), zero_shot=False, **kw)
    assert with_zs.episode_phases == ["zero-shot", "adapt", "adapt", "eval"]
    assert without.episode_phases == ["adapt", "adapt", "eval"]
    assert len(with_zs.success_by_episode) == len(with_zs.return_by_episode) == 4
    assert with_zs.return_by_episode[1:] == pytest.approx(without.return_by_episode)
    assert with_zs.adaptation_return == pytest.approx(without.adaptation_return)
    assert with_zs.mean_return == pytest.approx(without.mean_return)
    assert with_zs.zero_shot_return == pytest.approx(with_zs.return_by_episode[0])
    assert with_zs.adaptation_gain == pytest.approx(with_zs.success_rate - with_zs.zero_shot_success)
    assert without.zero_shot_success is None and without.adaptation_gain is None


def test_zero_shot_episode_keeps_no_transitions(pool):
    """The zero-shot episode acts at the prior mean: the same episode run as evaluation with no
    adaptation gives the same return."""
    torch.manual_seed(1)
    agent = MetaAgent(tiny_config("cmrl"), OBS_DIM, ACT_DIM, 16, ML4_TRAIN).eval()
    zs = evaluate_task(agent, pool, "drawer-open-v3", "train", _Encoder(), num_variations=2,
                       adaptation_episodes=0, eval_episodes=1, seed=4, zero_shot=True)
    # prior mean both times; only the reset seed differs, which Meta-World's fixed start ignores
    assert zs.return_by_episode[0] == pytest.approx(zs.return_by_episode[1], rel=1e-5)
