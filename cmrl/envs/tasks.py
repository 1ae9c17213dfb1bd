"""Benchmarks (which Meta-World envs are meta-train and which are held out) and goal texts.

ML4 is the seed report's custom benchmark: meta-train drawer-open, drawer-close, window-open;
held-out meta-test window-close. ML1, ML10, ML45 and any custom split go through the same
`BenchmarkConfig`. `Benchmark.train_tasks` never contains a held-out task: the split is checked
when the benchmark is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import BenchmarkConfig, ConfigError

METAWORLD_OBS_DIM = 39
METAWORLD_ACTION_DIM = 4
ML4_TRAIN = ("drawer-open-v3", "drawer-close-v3", "window-open-v3")
ML4_TEST = ("window-close-v3",)
ML10_GOAL_POSITION_TASKS = ("reach-v3", "push-v3", "pick-place-v3", "peg-insert-side-v3",
                            "sweep-v3")
"""ML10 meta-train tasks whose goal is a position the observation hides: Meta-World's scripted
experts succeed in 0 of 10 episodes on them when they read the goal-hidden observation (measured at
horizons 200 and 500), so only rewards, i.e. the context, can tell an agent where to go. On the
other five the scene itself (which object is there) says what to do. Results are reported per
group."""

# A canonical description first, then paraphrases. Training samples among them, so the encoder does
# not tie a task to one wording; the app offers them as examples. Every ML4 and ML10 task has them.
# Objects are named as they look in the scene: push and pick-place move a puck (a cylinder); sweep,
# sweep-into and shelf-place a block (a cube).
GOAL_TEXTS: dict[str, tuple[str, ...]] = {
    "drawer-open-v3": ("open the drawer", "pull the drawer open", "slide the drawer out",
                       "pull out the drawer by its handle"),
    "drawer-close-v3": ("close the drawer", "push the drawer shut", "slide the drawer in",
                        "push the drawer closed"),
    "window-open-v3": ("open the window", "slide the window open", "push the window open sideways",
                       "open the sliding window"),
    "window-close-v3": ("close the window", "slide the window shut", "shut the window",
                        "push the sliding window closed"),
    # ML10 meta-train
    "reach-v3": ("reach the goal position", "move the gripper to the target position",
                 "reach out to the target", "bring the hand to the goal point"),
    "push-v3": ("push the puck to the goal", "slide the puck over to the target",
                "push the puck along the table to the goal position",
                "shove the puck to the target spot"),
    "pick-place-v3": ("pick up the puck and place it at the goal",
                      "grasp the puck and put it down at the target",
                      "lift the puck and set it at the goal position",
                      "pick the puck up and move it to the target"),
    "door-open-v3": ("open the door", "swing the door open", "pull the door open",
                     "open the door on its hinge"),
    "button-press-topdown-v3": ("press the button from the top", "push the button down from above",
                                "press down on the button", "push down the top button"),
    "peg-insert-side-v3": ("insert the peg into the hole from the side",
                           "push the peg sideways into the hole", "slide the peg into the hole",
                           "put the peg in the hole sideways"),
    "sweep-v3": ("sweep the block off the table", "push the block off the edge of the table",
                 "brush the block off the table", "sweep the block over the table edge"),
    "basketball-v3": ("dunk the ball into the hoop", "put the basketball through the hoop",
                      "pick up the ball and drop it in the basket",
                      "score the basketball in the hoop"),
    # ML10 held out (drawer-open above is one of them too)
    "door-close-v3": ("close the door", "swing the door shut", "push the door closed",
                      "shut the door on its hinge"),
    "shelf-place-v3": ("place the block on the shelf", "pick up the block and put it on the shelf",
                       "lift the block onto the shelf", "set the block on the shelf"),
    "sweep-into-v3": ("sweep the block into the hole", "push the block into the hole",
                      "slide the block into the hole in the table",
                      "brush the block into the hole"),
    "lever-pull-v3": ("pull the lever up", "raise the lever", "rotate the lever upwards",
                      "lift the lever by pulling it up"),
}


# Phrasings that training never sees (held out from the paraphrase sampling above), to measure how
# far an agent's success depends on the exact words it was trained with.
UNSEEN_GOAL_TEXTS: dict[str, tuple[str, ...]] = {
    "drawer-open-v3": ("draw the drawer out towards you", "open up the drawer"),
    "drawer-close-v3": ("push the drawer back in", "shut the drawer"),
    "window-open-v3": ("slide the window to open it", "open up the window"),
    "window-close-v3": ("slide the window closed", "close up the window"),
    "reach-v3": ("put the gripper at the target spot", "go to the goal position"),
    "push-v3": ("nudge the puck towards the goal", "move the puck to the target by pushing"),
    "pick-place-v3": ("grab the puck and drop it at the goal",
                      "carry the puck to the target position"),
    "door-open-v3": ("open up the door", "pull the door towards you"),
    "button-press-topdown-v3": ("hit the button from above", "press the button downwards"),
    "peg-insert-side-v3": ("fit the peg into the hole from the side",
                           "shove the peg sideways into the hole"),
    "sweep-v3": ("knock the block off the table", "sweep the block away off the table"),
    "basketball-v3": ("slam dunk the basketball", "throw the ball into the basket"),
    "door-close-v3": ("close up the door", "push the door back shut"),
    "shelf-place-v3": ("put the block up on the shelf", "move the block onto the shelf"),
    "sweep-into-v3": ("knock the block into the hole", "sweep the block into the goal hole"),
    "lever-pull-v3": ("pull up on the lever", "swing the lever up"),
}


def _add_point_texts() -> None:
    from . import point_robot

    GOAL_TEXTS[point_robot.TASK] = point_robot.GOAL_TEXTS
    UNSEEN_GOAL_TEXTS[point_robot.TASK] = point_robot.UNSEEN_GOAL_TEXTS


_add_point_texts()


def unseen_goal_text(task: str) -> str | None:
    """A phrasing of the task that training never used (None where none is written)."""
    texts = UNSEEN_GOAL_TEXTS.get(task)
    return texts[0] if texts else None


def all_env_names() -> list[str]:
    """Every Meta-World v3 env name, in Meta-World's order."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def goal_texts(task: str) -> tuple[str, ...]:
    """Goal descriptions of a task: curated for ML4 and ML10, derived from the env name for the
    others."""
    if task in GOAL_TEXTS:
        return GOAL_TEXTS[task]
    words = task.removesuffix("-v3").split("-")
    return (" ".join(words),)


def canonical_goal_text(task: str) -> str:
    return goal_texts(task)[0]


@dataclass(frozen=True)
class Benchmark:
    """A resolved train/test split. Build it with `resolve_benchmark`."""

    name: str
    train_tasks: tuple[str, ...]
    test_tasks: tuple[str, ...]
    horizon: int
    seed: int

    @property
    def holds_out_variations(self) -> bool:
        """ML1 and the point robot hold out goal variations of their one task, not a task."""
        return self.name.startswith("ml1:") or self.name == "point"

    @property
    def is_point(self) -> bool:
        return self.name == "point"

    @property
    def goal_position_dim(self) -> int:
        return goal_position_dim(self.name)

    @property
    def obs_dim(self) -> int:
        from . import point_robot

        return point_robot.OBS_DIM if self.is_point else METAWORLD_OBS_DIM

    @property
    def act_dim(self) -> int:
        from . import point_robot

        return point_robot.ACTION_DIM if self.is_point else METAWORLD_ACTION_DIM

    def tasks(self, split: str) -> tuple[str, ...]:
        if split == "train":
            return self.train_tasks
        if split == "test":
            return self.test_tasks
        raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")

    def split_of(self, task: str) -> str:
        if task in self.train_tasks:
            return "train"
        if task in self.test_tasks:
            return "test"
        raise UnknownTaskError(task, self.train_tasks + self.test_tasks)


class UnknownTaskError(ValueError):
    def __init__(self, task: str, known: tuple[str, ...] | list[str]):
        super().__init__(f"unknown task {task!r}; known tasks: {', '.join(known)}")
        self.task = task


class HeldOutTaskError(RuntimeError):
    """Raised when code tries to train on (or collect prior data for) a held-out task."""


def goal_position_dim(benchmark_name: str) -> int:
    """Size of a goal variation's hidden goal position: x, y on the point robot; x, y, z on
    Meta-World."""
    return 2 if benchmark_name.lower() == "point" else 3


def resolve_benchmark(cfg: BenchmarkConfig) -> Benchmark:
    name = cfg.name.lower()
    if name == "point":
        from . import point_robot

        # The point robot's episodes have its own fixed length (PEARL's and MAML's 20 steps).
        return Benchmark(name=name, train_tasks=(point_robot.TASK,), test_tasks=(point_robot.TASK,),
                         horizon=point_robot.HORIZON, seed=cfg.seed)
    if name == "ml4":
        train, test = ML4_TRAIN, ML4_TEST
    elif name.startswith("ml1:"):
        env = name.split(":", 1)[1]
        train, test = (env,), (env,)  # ML1: the same env, held-out goal variations
    elif name in ("ml10", "ml45"):
        from metaworld import env_dict

        split = env_dict.ML10_V3 if name == "ml10" else env_dict.ML45_V3
        train, test = tuple(split["train"]), tuple(split["test"])
    elif name == "custom":
        train, test = tuple(cfg.train_tasks), tuple(cfg.test_tasks)
        if not train:
            raise ConfigError("a custom benchmark needs at least one train task")
    else:
        raise ConfigError(f"unknown benchmark {cfg.name!r}; use ml4, ml1:<env>, ml10, ml45, point "
                          "or custom")
    known = set(all_env_names())
    for task in train + test:
        if task not in known:
            raise UnknownTaskError(task, sorted(known))
    if name != "ml4" and not name.startswith("ml1:") and set(train) & set(test):
        raise ConfigError(f"tasks both meta-train and held out: {sorted(set(train) & set(test))}")
    if cfg.horizon < 1 or cfg.horizon > 500:
        raise ConfigError(f"horizon must be in 1..500, got {cfg.horizon}")
    return Benchmark(name=name, train_tasks=train, test_tasks=test, horizon=cfg.horizon,
                     seed=cfg.seed)
