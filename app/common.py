"""What every tab shares: paths, checkpoint discovery, the agent cache, input validation.

Validation turns anything a user (or an API client) can send into a clear `InputError` message;
the UI layer shows it with `gr.Error`. Only `cmrl`'s public functions are called.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import cmrl
from cmrl.envs import CAMERAS
from cmrl.tasks import ML4_TEST, ML4_TRAIN, GOAL_TEXTS, all_env_names
from cmrl.text_encoders import GoalTextError, TextEncoderError, validate_goal_text

ROOT = Path(__file__).resolve().parents[1]
ML4_TASKS = list(ML4_TRAIN + ML4_TEST)
SCENES = ML4_TASKS + [e for e in all_env_names() if e not in ML4_TASKS]
GOAL_EXAMPLES = [GOAL_TEXTS[t][0] for t in ML4_TASKS] + [
    GOAL_TEXTS["window-close-v3"][1], GOAL_TEXTS["drawer-open-v3"][1], "slide the window shut",
    "pull the handle towards you"]
DEFAULT_CHECKPOINT = "checkpoints/ml4/cmrl"
NUM_VARIATIONS = 50
MAX_EPISODES = 10
FRAME_SIZES = (224, 320, 480)


class InputError(ValueError):
    """Something a user typed or picked cannot be used; the message says what to do instead."""


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# -- checkpoints ------------------------------------------------------------------------------------
def display_path(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def resolve_path(text: str) -> Path:
    p = Path(os.path.expanduser(str(text).strip()))
    return p if p.is_absolute() else ROOT / p


def find_checkpoints(roots: list[Path] | None = None) -> list[str]:
    """Run directories (config.json + model.safetensors) under checkpoints/ then runs/ (and any
    extra roots), as paths relative to the repository where possible."""
    roots = roots or [ROOT / "checkpoints", ROOT / "runs"]
    found: list[str] = []
    for base in roots:
        base = Path(base)
        if not base.is_dir():
            continue
        for cfg in sorted(base.rglob("config.json")):
            run = cfg.parent
            if (run / "model.safetensors").is_file() and ".state" not in run.name:
                name = display_path(run)
                if name not in found:
                    found.append(name)
    return found


def default_checkpoint(found: list[str]) -> str | None:
    if DEFAULT_CHECKPOINT in found:
        return DEFAULT_CHECKPOINT
    return found[0] if found else None


class AgentCache:
    """Loaded agents by run directory, reloaded when the files change (a run still training)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[str, tuple[tuple, cmrl.TrainedAgent]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(run: Path) -> tuple:
        out = []
        for name in ("config.json", "model.safetensors"):
            try:
                st = (run / name).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append(None)
        return tuple(out)

    def get(self, checkpoint: str, allowed: list[str] | None = None) -> cmrl.TrainedAgent:
        if checkpoint is None or not str(checkpoint).strip():
            raise InputError("No checkpoint selected. Train one in the Train tab (or with "
                             "`python -m cmrl train ...`), then press ↻ next to the checkpoint list.")
        if allowed is not None and str(checkpoint).strip() not in allowed:
            raise InputError(f"Checkpoint {checkpoint!r} is not one of the checkpoints this page "
                             "offers; pick one from the list.")
        run = resolve_path(checkpoint)
        key = str(run.resolve())
        with self._lock:
            stamp = self._stamp(run)
            hit = self._items.get(key)
            if hit is not None and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1]
            try:
                agent = cmrl.load_agent(run)
                if agent.kind == "cmrl":
                    agent.encode_goal("warm up")  # load the text encoder now, not mid-rollout
            except (cmrl.CheckpointError, cmrl.ConfigError, TextEncoderError) as e:
                raise InputError(f"Cannot load checkpoint {checkpoint!r}: {e}") from e
            except (OSError, ValueError, RuntimeError) as e:
                raise InputError(f"Cannot load checkpoint {checkpoint!r}: "
                                 f"{type(e).__name__}: {e}") from e
            self._items[key] = (stamp, agent)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return agent


def describe_agent(agent: cmrl.TrainedAgent) -> str:
    info = agent.info
    net = agent.config.net
    arch = (f"{net.num_layers} layers x {net.num_modules} modules x {net.module_width}"
            if agent.kind in ("cmrl", "sm") else f"MLP {list(net.mlp_hidden)}")
    enc = info.get("text_encoder", {}).get("name", "none")
    return (f"**{agent.kind}** · {info.get('mode', '?')} · {info.get('env_steps', 0):,} env steps, "
            f"{info.get('grad_steps', 0):,} gradient steps · {arch} · text encoder {enc} · "
            f"prior data {info.get('prior_data', 'none')} · trained on "
            f"{', '.join(info.get('train_tasks', []))}; held out {', '.join(info.get('test_tasks', []))}")


# -- inputs -----------------------------------------------------------------------------------------
def parse_int(value, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] from a number or text, or InputError saying what is expected."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{what} is empty: enter a whole number from {lo} to {hi}.")
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}.")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {str(value)[:40]!r}.")
    if f != f or f in (float("inf"), float("-inf")) or f != int(f):
        raise InputError(f"{what} must be a whole number from {lo} to {hi}, got {str(value)[:40]!r}.")
    n = int(f)
    if not lo <= n <= hi:
        raise InputError(f"{what} must be from {lo} to {hi}, got {n}.")
    return n


def parse_scene(scene) -> str:
    if not isinstance(scene, str) or not scene.strip():
        raise InputError("No scene selected: pick a Meta-World v3 environment, e.g. window-close-v3.")
    scene = scene.strip()
    if scene not in SCENES:
        raise InputError(f"Unknown scene {scene[:60]!r}: pick a Meta-World v3 environment from the "
                         f"list (the ML4 tasks are {', '.join(ML4_TASKS)}).")
    return scene


def parse_camera(camera) -> str:
    if camera not in CAMERAS:
        raise InputError(f"Unknown camera {str(camera)[:40]!r}; choose one of {', '.join(CAMERAS)}.")
    return camera


def parse_goal(goal, what: str = "The goal description") -> str:
    try:
        return validate_goal_text(goal)
    except GoalTextError as e:
        msg = str(e)
        raise InputError(msg[0].upper() + msg[1:] if what == "The goal description"
                         else f"{what}: {msg}") from e
