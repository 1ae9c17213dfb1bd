"""Meta-World environments: goal variations, hidden goals, a fixed horizon, upright fast rendering.

`TaskPool` owns the Meta-World benchmark object of a `Benchmark` and hands out goal variations
(Meta-World `Task`s) per env name and split, plus a second, independently seeded pool of *fresh*
variations for evaluation. `TaskEnv` wraps one Meta-World env: `reset(variation)`, `step(action)`
returning (obs, reward, success, done), and `render()` returning an upright RGB frame.

Rendering traps handled here (see REFERENCE.md): MUJOCO_GL must be set before mujoco is imported
(EGL by default), the `corner*` cameras are upside down, shadows are the slow part of software
rendering, and each env's GL context must be made current before it renders.
"""

from __future__ import annotations

import os
import threading
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from .tasks import (METAWORLD_ACTION_DIM, METAWORLD_OBS_DIM, Benchmark,  # noqa: E402
                    UnknownTaskError, all_env_names)

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
_FLIPPED_CAMERAS = {"corner", "corner2", "corner3", "corner4"}
OBS_DIM = METAWORLD_OBS_DIM
ACTION_DIM = METAWORLD_ACTION_DIM
GOAL_SLICE = slice(36, 39)
"""Where Meta-World's observation holds the goal position (zeros while the goal is hidden)."""
NUM_VARIATIONS = 50
BELIEF_RADIUS = 0.02
"""Metres: the sphere that shows where an agent believes the goal is."""

# Meta-World's scripted policies warn on every step; the envs warn about deprecated gym API use.
warnings.filterwarnings("ignore", message=".*Constant\\(s\\) may be too high.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="gymnasium")
warnings.filterwarnings("ignore", category=UserWarning, module="gymnasium")


def _metaworld_benchmark(benchmark: Benchmark, seed: int):
    if benchmark.is_point:
        from .point_robot import PointSource

        return PointSource(seed)
    return _MetaWorldSplits(benchmark, seed)


class _MetaWorldSplits:
    """What `metaworld.ML1(env, seed)` / `metaworld.CustomML(train, test, seed)` hold (classes and
    goal variations per split), each split's variations drawn only when first asked for. Meta-World
    seeds the two splits apart (ML1: seed and seed + 1; CustomML: seed for each), so drawing one
    never changes the other. A split costs a constructor and 50 resets per env (ML10's: ~10 s of
    CPU), and the evaluator needs only the test split of one seed and the train split of another,
    training only the train split."""

    def __init__(self, benchmark: Benchmark, seed: int):
        from metaworld import env_dict

        self._ml1 = benchmark.name.startswith("ml1:")
        self._seed = seed
        self.train_classes = env_dict._get_env_dict(list(benchmark.train_tasks))
        self.test_classes = env_dict._get_env_dict(list(benchmark.test_tasks))
        self._tasks: dict[str, list] = {}

    def _split(self, split: str) -> list:
        if split not in self._tasks:
            import metaworld
            from metaworld import env_dict

            classes = self.train_classes if split == "train" else self.test_classes
            if self._ml1:
                kwargs = {name: env_dict.ML1_ARGS_KWARGS[name] for name in classes}
                seed = self._seed + (split == "test")
            else:
                kwargs = env_dict._get_args_kwargs(env_dict.ALL_V3_ENVIRONMENTS, classes)
                seed = self._seed
            self._tasks[split] = (metaworld._make_tasks(classes, kwargs, metaworld._ML_OVERRIDE,
                                                        seed=seed) if classes else [])
        return self._tasks[split]

    @property
    def train_tasks(self) -> list:
        return self._split("train")

    @property
    def test_tasks(self) -> list:
        return self._split("test")


class TaskPool:
    """Goal variations of a benchmark's tasks, and envs built from them.

    `split="train"` variations are the ones training sees; `fresh=True` gives variations drawn by a
    differently seeded Meta-World benchmark, for evaluating meta-train tasks on goals not trained on.
    """

    def __init__(self, benchmark: Benchmark):
        self.benchmark = benchmark
        self.obs_dim, self.act_dim = benchmark.obs_dim, benchmark.act_dim
        self._mw = _metaworld_benchmark(benchmark, benchmark.seed)
        self._mw_fresh = None

    def _source(self, fresh: bool):
        if not fresh:
            return self._mw
        if self._mw_fresh is None:
            self._mw_fresh = _metaworld_benchmark(self.benchmark, self.benchmark.seed + 10_007)
        return self._mw_fresh

    def variations(self, task: str, split: str | None = None, fresh: bool = False) -> list:
        split = split or self.benchmark.split_of(task)
        if task not in self.benchmark.tasks(split):
            raise UnknownTaskError(task, self.benchmark.tasks(split))
        mw = self._source(fresh)
        tasks = mw.train_tasks if split == "train" else mw.test_tasks
        return [t for t in tasks if t.env_name == task]

    def env_class(self, task: str, split: str | None = None):
        split = split or self.benchmark.split_of(task)
        if self.benchmark.is_point:
            from .point_robot import PointEnv

            return PointEnv
        classes = self._mw.train_classes if split == "train" else self._mw.test_classes
        return classes[task]

    def make_env(self, task: str, split: str | None = None, **render_kw) -> "TaskEnv":
        if self.benchmark.is_point:
            return self.env_class(task, split)(self.benchmark.horizon, **render_kw)
        return TaskEnv(self.env_class(task, split), task, self.benchmark.horizon, **render_kw)


_SCENE_LOCK = threading.Lock()
_SCENES: dict[tuple[str, int], tuple[type, list]] = {}


def make_scene(task: str, horizon: int = 200, seed: int = 0, **render_kw) -> tuple["TaskEnv", list]:
    """An env of any Meta-World v3 task with its goal variations, outside any benchmark (for the app).

    Meta-World draws the variations from numpy's global generator, so two threads building scenes at
    once would corrupt each other's draws (wrong variations, or its "Only generated 47 unique
    goals" assertion): construction, the variations' and the env's, is locked here, for every
    caller (the app's concurrent rollouts included), and the variations are cached per
    (task, seed)."""
    from . import point_robot

    if task == point_robot.TASK:
        return (point_robot.PointEnv(min(horizon, point_robot.HORIZON), **render_kw),
                point_robot.PointSource(seed).train_tasks)
    import metaworld

    if task not in all_env_names():
        raise UnknownTaskError(task, all_env_names() + [point_robot.TASK])
    with _SCENE_LOCK:
        if (task, seed) not in _SCENES:
            mw = metaworld.ML1(task, seed=seed)
            _SCENES[(task, seed)] = (mw.train_classes[task], list(mw.train_tasks))
        env_cls, variations = _SCENES[(task, seed)]
        env = TaskEnv(env_cls, task, horizon, **render_kw)
    return env, list(variations)


class TaskEnv:
    """One Meta-World env with a hidden goal and a fixed horizon."""

    obs_dim, act_dim = OBS_DIM, ACTION_DIM

    def __init__(self, env_cls, task: str, horizon: int, render: bool = False,
                 camera: str = "corner", size: int = 224, shadows: bool = False):
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; choose one of {', '.join(CAMERAS)}")
        self.task = task
        self.horizon = horizon
        self.camera = camera
        kw = dict(render_mode="rgb_array", camera_name=camera, width=size, height=size) if render else {}
        self.env = env_cls(**kw)
        self.env.max_path_length = horizon
        if render and not shadows:
            self.env.model.vis.quality.shadowsize = 0  # the slow part of software rendering
            self.env.model.vis.quality.offsamples = 0  # no multisampling: ~2x faster, looks the same
        self._render = render
        self.t = 0
        self.variation = None

    def reset(self, variation=None, seed: int | None = None) -> np.ndarray:
        if variation is not None and variation is not self.variation:
            self.env.set_task(variation)
            self.variation = variation
        elif self.variation is None:
            raise RuntimeError("TaskEnv.reset needs a goal variation the first time")
        obs, _ = self.env.reset(seed=seed)
        self.t = 0
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Returns (obs, reward, success, done); done is the horizon's truncation, never a failure."""
        obs, reward, _term, trunc, info = self.env.step(np.asarray(action, dtype=np.float64))
        self.t += 1
        done = bool(trunc) or self.t >= self.horizon
        return obs.astype(np.float32), float(reward), bool(info["success"] > 0), done

    def privileged_obs(self, obs: np.ndarray) -> np.ndarray:
        """`obs`, this env's current observation, with the hidden goal position filled in (float64),
        as Meta-World's scripted policies read it. For scripted experts only: reach, push,
        pick-place, peg-insert-side and sweep steer to that position and fail without it. What an
        agent sees, and what datasets store, is `obs` itself (goal zeroed)."""
        full = np.array(obs, dtype=np.float64)
        full[GOAL_SLICE] = self.env._get_pos_goal()
        return full

    @property
    def goal(self) -> np.ndarray:
        """The hidden goal position of the current variation (what the agent must infer)."""
        return np.asarray(self.env._get_pos_goal(), np.float64)

    def render(self, belief: np.ndarray | None = None) -> np.ndarray:
        """An upright RGB frame. `belief` (x, y, z: where an agent thinks the goal is) is drawn as
        an orange sphere, beside the red goal marker Meta-World's goal-position scenes show."""
        if not self._render:
            raise RuntimeError("this env was built without rendering (render=True)")
        viewer = self.env.mujoco_renderer._get_viewer("rgb_array")
        viewer.make_context_current()  # several envs in one process share GL state otherwise
        if belief is not None and np.size(belief) == 3 and np.isfinite(belief).all():
            viewer.add_marker(pos=np.asarray(belief, np.float64).ravel(),  # this frame only
                              size=np.full(3, BELIEF_RADIUS), rgba=np.array([1.0, 0.55, 0.0, 0.75]))
        frame = self.env.render()
        if self.camera in _FLIPPED_CAMERAS:
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame)

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:  # closing a GL context twice, or at interpreter exit, is harmless
            pass
