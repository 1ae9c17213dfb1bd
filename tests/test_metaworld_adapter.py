"""The Meta-World adapter without adaptation episodes (zero-shot under metalearning_evaluation):
evaluation acts with the prior's mean, as the project's evaluator's zero-shot episode does."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from cmrl.algo.agent import MetaAgent, TaskBelief
from cmrl.algo.metaworld_adapter import MetaWorldAgent
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config


def test_zero_shot_evaluation_acts_at_the_prior_mean():
    torch.manual_seed(0)
    agent = MetaAgent(tiny_config("cmrl"), OBS_DIM, ACT_DIM, 384, ML4_TRAIN)
    goal = np.random.default_rng(0).normal(size=384).astype(np.float32)
    trained = SimpleNamespace(agent=agent, encode_goal=lambda text: goal)
    obs = np.random.default_rng(1).normal(size=(2, OBS_DIM))
    mw = MetaWorldAgent(trained, {"window-close-v3": "close the window"}, ["window-close-v3"] * 2)
    mw.init()
    mw.adapt()  # metalearning_evaluation with adaptation_episodes=0 calls adapt() before any obs
    torch.manual_seed(123)  # a z sampled from the prior would depend on this
    action = mw.eval_action(obs)
    ref = TaskBelief(agent, 2, goal=np.stack([goal, goal]))
    ref.sample_z(deterministic=True)
    torch.testing.assert_close(mw.belief.z, ref.infer_posterior()[0])
    np.testing.assert_allclose(action, ref.act(obs.astype(np.float32), deterministic=True)
                               .action.numpy(), rtol=1e-6, atol=1e-6)
