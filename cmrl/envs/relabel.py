"""Rewards recomputed for another goal (hindsight relabelling), where a task's reward is a known
function of the observation and the goal position.

A transition collected while heading for goal A says, relabelled, what the same move would have
earned under goal B. Contexts built that way show the encoder many behaviours per goal, so it must
read the goal from the rewards rather than from where the behaviour policy went (the context shift
between scripted experts and the agent's own exploration).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import point_robot

Relabeller = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""(obs [..., D], next_obs [..., D], goal [G]) -> rewards [...] under that goal."""


def _point(obs: np.ndarray, next_obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    return point_robot.relabel_rewards(next_obs, goal)


REACH_HAND_INIT = np.array([0.0, 0.6, 0.2])
"""reach-v3's initial hand position (its reward's margin is the distance from there to the goal)."""


def _reach(obs: np.ndarray, next_obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Meta-World reach-v3's reward (v2 reward function): 10 x tolerance(|tcp - goal|, bounds
    (0, 0.05), margin |hand_init - goal|, long tail). The stored observation has the hand's end
    effector, not the fingers' centre the env measures from, so this is close, not exact: on
    scripted-expert and random episodes it correlates at 0.98-0.999 with the env's own reward, with
    at most ~1.0 of 10 apart (tests/test_adaptation.py checks it)."""
    from metaworld.utils import reward_utils

    goal = np.asarray(goal, np.float64)[:3]
    dist = np.linalg.norm(np.asarray(next_obs, np.float64)[..., 0:3] - goal, axis=-1)
    margin = float(np.linalg.norm(REACH_HAND_INIT - goal))
    return (10.0 * reward_utils.tolerance(dist, bounds=(0.0, 0.05), margin=margin,
                                          sigmoid="long_tail")).astype(np.float32)


_RELABELLERS: dict[str, Relabeller] = {point_robot.TASK: _point, "reach-v3": _reach}


def reward_relabeller(task: str) -> Relabeller | None:
    """The task's relabelling function, or None where its reward cannot be recomputed from the
    stored observations."""
    return _RELABELLERS.get(task)
