"""A 2-D point robot whose goal is hidden on a half circle: the sanity benchmark where adapting is the
whole task (PEARL, MAML and ProMP use it).

The robot starts at the origin; an action in [-1, 1]^2 moves it by 0.1 x action; the reward is minus
the distance to the goal, and an episode succeeds once the robot is within 0.2 of it. Goals lie on
the upper half of the unit circle. The observation is the position alone, so nothing but rewards can
say where the goal is: an agent that does not adapt can at best go to the middle of the arc.

Goal variations come from three independently seeded draws of angles in [0, pi]: `train` (what
training sees), `test` (held-out goals) and `fresh` (meta-train evaluation on goals not trained on),
mirroring Meta-World's ML1. The env follows `TaskEnv`'s interface (`reset(variation)`, `step`,
`privileged_obs`, `render`), so datasets, training, evaluation and the app treat it like a
Meta-World task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TASK = "point-robot"
HORIZON = 20
OBS_DIM = 2
ACTION_DIM = 2
STEP_SIZE = 0.1
SUCCESS_RADIUS = 0.2
NUM_TRAIN_GOALS = 40
NUM_TEST_GOALS = 20
GOAL_TEXTS = ("reach the hidden goal on the half circle", "move the point to the goal on the arc",
              "find the goal somewhere on the half circle", "go to the target on the arc")
UNSEEN_GOAL_TEXTS = ("find the target point on the semicircle",)


@dataclass(frozen=True)
class PointGoal:
    """One goal variation (plays the role of a Meta-World `Task`)."""

    env_name: str
    index: int
    goal: tuple[float, float]


def goal_variations(seed: int, count: int) -> list[PointGoal]:
    angles = np.random.default_rng(seed).uniform(0.0, np.pi, size=count)
    return [PointGoal(TASK, i, (float(np.cos(a)), float(np.sin(a)))) for i, a in enumerate(angles)]


class PointSource:
    """The point robot's goal variations in the shape `TaskPool` reads from a Meta-World benchmark."""

    def __init__(self, seed: int):
        # Distinct streams for the two splits, so adding train goals never moves the test goals.
        self.train_tasks = goal_variations(seed * 2 + 1, NUM_TRAIN_GOALS)
        self.test_tasks = goal_variations(seed * 2 + 2, NUM_TEST_GOALS)


class PointEnv:
    """The point robot with `TaskEnv`'s interface (the goal hidden from the observation)."""

    obs_dim, act_dim = OBS_DIM, ACTION_DIM

    def __init__(self, horizon: int = HORIZON, render: bool = False, size: int = 224, **_ignored):
        self.task = TASK
        self.horizon = horizon
        self.size = size
        self._render = render
        self.t = 0
        self.variation: PointGoal | None = None
        self.pos = np.zeros(2)
        self.trail: list[np.ndarray] = []

    @property
    def goal(self) -> np.ndarray:
        if self.variation is None:
            raise RuntimeError("PointEnv has no goal before its first reset")
        return np.asarray(self.variation.goal)

    def reset(self, variation: PointGoal | None = None, seed: int | None = None) -> np.ndarray:
        if variation is not None:
            self.variation = variation
        elif self.variation is None:
            raise RuntimeError("PointEnv.reset needs a goal variation the first time")
        self.pos = np.zeros(2)
        self.t = 0
        self.trail = [self.pos.copy()]
        return self.pos.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        a = np.clip(np.asarray(action, np.float64).reshape(ACTION_DIM), -1.0, 1.0)
        self.pos = self.pos + STEP_SIZE * a
        self.t += 1
        self.trail.append(self.pos.copy())
        dist = float(np.linalg.norm(self.pos - self.goal))
        return self.pos.astype(np.float32), -dist, dist < SUCCESS_RADIUS, self.t >= self.horizon

    def privileged_obs(self, obs: np.ndarray) -> np.ndarray:
        """The observation with the hidden goal appended (for the scripted expert only)."""
        return np.concatenate([np.asarray(obs, np.float64), self.goal])

    def render(self, belief: np.ndarray | None = None) -> np.ndarray:
        """An RGB top view: the arc of possible goals, the goal (green), the trail and the robot
        (blue), and `belief` (an [x, y] the agent is thought to head for) as an orange ring."""
        if not self._render:
            raise RuntimeError("this env was built without rendering (render=True)")
        s = self.size
        img = np.full((s, s, 3), 250, np.uint8)
        yy, xx = np.mgrid[0:s, 0:s]
        # World window: x in [-1.3, 1.3], y in [-0.4, 1.3], y up.
        wx = -1.3 + 2.6 * (xx + 0.5) / s
        wy = 1.3 - 1.7 * (yy + 0.5) / s
        r = np.hypot(wx, wy)
        img[(np.abs(r - 1.0) < 0.012) & (wy >= 0)] = (170, 170, 170)

        def disc(p, radius, color, ring: bool = False):
            d = np.hypot(wx - p[0], wy - p[1])
            img[(np.abs(d - radius) < 0.015) if ring else (d < radius)] = color

        disc(self.goal, SUCCESS_RADIUS, (60, 170, 75), ring=True)
        disc(self.goal, 0.035, (60, 170, 75))
        for p in self.trail[:-1]:
            disc(p, 0.018, (120, 150, 220))
        if belief is not None:
            disc(np.asarray(belief, np.float64), 0.06, (240, 140, 20), ring=True)
        disc(self.pos, 0.04, (30, 80, 200))
        return img

    def close(self) -> None:
        pass


class PointExpert:
    """The scripted expert: straight to the goal at full speed (reads the privileged observation)."""

    def get_action(self, privileged: np.ndarray) -> np.ndarray:
        pos, goal = privileged[:2], privileged[2:4]
        return np.clip((goal - pos) / STEP_SIZE, -1.0, 1.0)


def relabel_rewards(next_obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The reward transitions ending in `next_obs` [..., 2] would have earned with goal `goal` [2]."""
    return -np.linalg.norm(np.asarray(next_obs, np.float64) - np.asarray(goal), axis=-1).astype(np.float32)
