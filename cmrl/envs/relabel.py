"""Rewards recomputed for another goal (hindsight relabelling), where a task's reward is a known
function of the observation, the goal position and what was recorded.

A transition collected while heading for goal A says, relabelled, what the same move would have
earned under goal B. Contexts built that way show the encoder many behaviours per goal, so it must
read the goal from the rewards rather than from where the behaviour policy went (the context shift
between scripted experts and the agent's own exploration).

The point robot's and reach-v3's rewards are functions of the observation and the goal alone. In
push-v3 and pick-place-v3 the goal enters only through the object-to-goal term and the success
override, but the rest (the gripper "caging" term) reads the finger pads, which the observation
lacks. Those relabellers recover that goal-free term from the recorded reward under the recorded
goal (`goal_free_terms`, once per stored episode), then recompute the goal's part for the new one.
Physics does not depend on the goal, so replaying the same actions with only the goal moved gives
the exact target (`tests/test_relabel.py` compares against it).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import point_robot


class Recorded(NamedTuple):
    """What the data recorded about the rows being relabelled (for rewards with a goal-free part)."""

    rewards: np.ndarray
    """[n] the rewards recorded under each row's own goal."""
    goals: np.ndarray
    """[n, 3] each row's own (recorded) goal."""
    first_obs: np.ndarray
    """[n, D] the first observation of each row's episode (where the object started)."""
    terms: np.ndarray | None = None
    """[n, K] the relabeller's goal-free terms of each row (`goal_free_terms`), once computed."""


class Relabeller:
    """Rewards of stored transitions under another goal. Subclasses whose reward has a part the
    observation cannot give set `needs_recorded` and implement `goal_free_terms`."""

    needs_recorded = False

    def __call__(self, obs: np.ndarray, next_obs: np.ndarray, goal: np.ndarray,
                 recorded: Recorded | None = None) -> np.ndarray:
        """(obs [n, D], next_obs [n, D], goal [G], recorded rows) -> rewards [n] under `goal`."""
        raise NotImplementedError

    def goal_free_terms(self, next_obs: np.ndarray, recorded: Recorded,
                        episode_start: np.ndarray) -> np.ndarray:
        """[n, K] terms of one stored sequence of rows, in the order they were collected;
        `episode_start` [n] marks each episode's first row."""
        raise NotImplementedError


class _Point(Relabeller):
    def __call__(self, obs, next_obs, goal, recorded=None):
        return point_robot.relabel_rewards(next_obs, goal)


REACH_HAND_INIT = np.array([0.0, 0.6, 0.2])
"""reach-v3's initial hand position (its reward's margin is the distance from there to the goal)."""

TCP_OFFSET = np.array([0.0, 0.005, -0.045])
"""The fingers' centre (where Meta-World measures from) minus the observed hand position; measured
on push-v3 episodes within 1.3 / 7.4 / 0.3 mm per axis (the gripper keeps its orientation)."""

TARGET_RADIUS = 0.05
"""push-v3 and pick-place-v3: success, and the reward's override to 10, within this of the goal."""


def _tolerance(dist: np.ndarray, margin) -> np.ndarray:
    """Meta-World's `reward_utils.tolerance(dist, bounds=(0, 0.05), margin, "long_tail")` (value
    0.1 at the margin), with a margin per row where Meta-World's takes one number."""
    dist = np.asarray(dist, np.float64)
    margin = np.broadcast_to(np.asarray(margin, np.float64), dist.shape)
    scale = np.sqrt(1.0 / 0.1 - 1.0)
    d = (dist - TARGET_RADIUS) / np.where(margin > 0, margin, 1.0)
    outside = np.where(margin > 0, 1.0 / ((d * scale) ** 2 + 1.0), 0.0)
    return np.where(dist <= TARGET_RADIUS, 1.0, outside)


class _Reach(Relabeller):
    """Meta-World reach-v3's reward (v2 reward function): 10 x tolerance(|tcp - goal|, bounds
    (0, 0.05), margin |hand_init - goal|, long tail). The stored observation has the hand's end
    effector, not the fingers' centre the env measures from, so this is close, not exact: on
    scripted-expert and random episodes it correlates at 0.98-0.999 with the env's own reward, with
    at most ~1.0 of 10 apart (tests/test_variation_context.py checks it)."""

    def __call__(self, obs, next_obs, goal, recorded=None):
        goal = np.asarray(goal, np.float64)[:3]
        dist = np.linalg.norm(np.asarray(next_obs, np.float64)[..., 0:3] - goal, axis=-1)
        margin = float(np.linalg.norm(REACH_HAND_INIT - goal))
        return (10.0 * _tolerance(dist, margin)).astype(np.float32)


def _hamacher(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Meta-World's Hamacher product a b / (a + b - a b), 0 where both are 0."""
    den = a + b - a * b
    return np.where(den > 0, a * b / np.where(den > 0, den, 1.0), 0.0)


class _ObjectToGoal(Relabeller):
    """push-v3 and pick-place-v3 (v2 reward functions). Both read the object (obs[4:7]) and the
    gripper's openness (obs[3]); the goal enters through in_place = tolerance(|obj - goal|, bounds
    (0, 0.05), margin |obj_init - goal|, long tail), and the reward is 10 within 0.05 of the goal.
    The rest is a grasp term g in [0, 1] and a gate (fingers within 2 cm of the object, open, and
    for pick-place the object lifted), which `goal_free_terms` recovers per row as (g, gate)."""

    needs_recorded = True
    lift_gate = False

    def _gate_from_obs(self, next_obs: np.ndarray, obj_init: np.ndarray) -> np.ndarray:
        obj = next_obs[:, 4:7]
        tcp = next_obs[:, 0:3] + TCP_OFFSET
        gate = (np.linalg.norm(obj - tcp, axis=-1) < 0.02) & (next_obs[:, 3] > 0)
        if self.lift_gate:
            gate &= obj[:, 2] - 0.01 > obj_init[:, 2]
        return gate

    @staticmethod
    def _in_place(next_obs: np.ndarray, goals: np.ndarray, obj_init: np.ndarray) -> tuple:
        obj = next_obs[:, 4:7]
        to_goal = np.linalg.norm(obj - goals, axis=-1)
        margin = np.linalg.norm(obj_init - goals, axis=-1)
        return to_goal, _tolerance(to_goal, margin)

    def _grasp(self, r: np.ndarray, ip: np.ndarray, gate: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _gate_from_reward(self, r: np.ndarray, ip: np.ndarray) -> np.ndarray:
        """True / False where the recorded reward settles the gate, -1 where it cannot."""
        raise NotImplementedError

    def goal_free_terms(self, next_obs, recorded, episode_start):
        next_obs = np.asarray(next_obs, np.float64)
        r = np.asarray(recorded.rewards, np.float64)
        obj_init = np.asarray(recorded.first_obs, np.float64)[:, 4:7]
        to_goal, ip = self._in_place(next_obs, np.asarray(recorded.goals, np.float64), obj_init)
        settled = self._gate_from_reward(r, ip)
        gate = np.where(settled >= 0, settled == 1, self._gate_from_obs(next_obs, obj_init))
        overridden = to_goal < TARGET_RADIUS
        g = np.where(overridden, np.nan, self._grasp(r, ip, gate))
        # Where the reward was overridden to 10, g is unknown: carry the episode's last known g.
        known = ~np.isnan(g)
        pos = np.arange(len(g))
        last = np.maximum.accumulate(np.where(known | episode_start, pos, 0))
        filled = np.where(known[last], g[last], 0.0)
        return np.stack([filled, gate.astype(np.float64)], -1).astype(np.float32)

    def __call__(self, obs, next_obs, goal, recorded=None):
        if recorded is None or recorded.terms is None:
            raise ValueError("this task's relabelling needs the recorded rows' goal-free terms")
        next_obs = np.asarray(next_obs, np.float64)
        goals = np.broadcast_to(np.asarray(goal, np.float64)[:3], (len(next_obs), 3))
        obj_init = np.asarray(recorded.first_obs, np.float64)[:, 4:7]
        to_goal, ip = self._in_place(next_obs, goals, obj_init)
        g, gate = recorded.terms[:, 0].astype(np.float64), recorded.terms[:, 1] > 0.5
        r = self._reward(g, gate, ip)
        return np.where(to_goal < TARGET_RADIUS, 10.0, r).astype(np.float32)

    def _reward(self, g, gate, ip):
        raise NotImplementedError


class _Push(_ObjectToGoal):
    """push-v3: r = 2 g, or 1 + 4 g + 5 in_place under the gate."""

    def _gate_from_reward(self, r, ip):
        # Under the gate r >= 1 + 5 in_place; without it r <= 2.
        return np.where(r > 2.0 + 1e-4, 1, np.where(r < 1.0 + 5.0 * ip - 1e-4, 0, -1))

    def _grasp(self, r, ip, gate):
        return np.clip(np.where(gate, (r - 1.0 - 5.0 * ip) / 4.0, r / 2.0), 0.0, 1.0)

    def _reward(self, g, gate, ip):
        return np.where(gate, 1.0 + 4.0 * g + 5.0 * ip, 2.0 * g)


class _PickPlace(_ObjectToGoal):
    """pick-place-v3: r = hamacher(g, in_place), plus 1 + 5 in_place under the gate."""

    lift_gate = True

    def _gate_from_reward(self, r, ip):
        # Hamacher products are <= 1; the gate adds at least 1 + 5 in_place.
        return np.where(r > 1.0 + 1e-4, 1, np.where(r < 1.0 + 5.0 * ip - 1e-4, 0, -1))

    def _grasp(self, r, ip, gate):
        h = np.clip(r - np.where(gate, 1.0 + 5.0 * ip, 0.0), 0.0, None)
        # h = g ip / (g + ip - g ip)  =>  g = h ip / (ip - h + h ip)
        den = ip - h + h * ip
        return np.clip(np.where(den > 1e-9, h * ip / np.where(den > 1e-9, den, 1.0), 1.0), 0.0, 1.0)

    def _reward(self, g, gate, ip):
        return _hamacher(g, ip) + np.where(gate, 1.0 + 5.0 * ip, 0.0)


_RELABELLERS: dict[str, Relabeller] = {point_robot.TASK: _Point(), "reach-v3": _Reach(),
                                       "push-v3": _Push(), "pick-place-v3": _PickPlace()}


def reward_relabeller(task: str, recorded: bool = True) -> Relabeller | None:
    """The task's relabelling function, or None where its reward cannot be recomputed from the
    stored data (or, with `recorded` False, where it needs the recorded reward)."""
    relabel = _RELABELLERS.get(task)
    return None if relabel is None or (relabel.needs_recorded and not recorded) else relabel
