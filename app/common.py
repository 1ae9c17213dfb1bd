"""What every tab shares: paths, checkpoint discovery, the agent cache, input validation.

Validation turns anything a user (or an API client) can send into a clear `InputError` message;
the UI layer shows it with `gr.Error`. Only `cmrl`'s public functions are called.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path

import cmrl
from cmrl.agent_kinds import agent_kind
from cmrl.errors import user_errors, user_message
from cmrl.envs.metaworld_env import CAMERAS
from cmrl.envs.point_robot import TASK as POINT_TASK
from cmrl.envs.tasks import ML4_TEST, ML4_TRAIN, GOAL_TEXTS, all_env_names
from cmrl.nets.text_encoders import GoalTextError, validate_goal_text
from cmrl.runs.checkpoint import find_run_dirs

ROOT = Path(__file__).resolve().parents[1]
ML4_TASKS = list(ML4_TRAIN + ML4_TEST)
SCENES = ML4_TASKS + [e for e in all_env_names() if e not in ML4_TASKS] + [POINT_TASK]
GOAL_EXAMPLES = [GOAL_TEXTS[t][0] for t in ML4_TASKS] + [
    GOAL_TEXTS["window-close-v3"][1], GOAL_TEXTS["drawer-open-v3"][1], "slide the window shut",
    "pull the handle towards you"]
DEFAULT_CHECKPOINT = "checkpoints/ml4/cmrl"
ADAPT_OPENING = ("checkpoints/ml1/reach-v3/cmrl", "reach-v3")
"""The checkpoint and scene the Adapt tab opens on where that checkpoint is found: a goal position
hidden from the agent (the red ball shows it to the viewer), which its context must find from
experience; the orange ball is where the agent believes the goal is."""
NUM_VARIATIONS = 50
MAX_EPISODES = 10
FRAME_SIZES = (224, 320, 480)
MAX_TEXT = 500
"""Longest path or name accepted from a text field."""
APP_MAX_MODEL_BYTES = int(os.environ.get("CMRL_APP_MAX_MODEL_MB", "256")) << 20
"""Budget of the networks of a checkpoint the page loads (`cmrl.load_agent(max_bytes=...)`)."""
MAX_FOLDER_ENTRIES = 10_000
"""Files and folders a checkpoint or dataset folder may hold, all checked before it is read (a run
directory holds about ten, a dataset a few per task)."""
NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
"""A number typed as text: ASCII digits, an optional sign, point and exponent. Python's int() and
float() also take other scripts' digits ("٣", full-width "１２"), "1_000", "nan" and "inf"."""


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


def leaves_roots(folder: Path, roots: list[Path],
                 max_entries: int = MAX_FOLDER_ENTRIES) -> str | None:
    """Why the files under `folder` may not be read, or None when they may: "link" when the folder
    or anything under it, all links followed (os.path.realpath), lies outside every root, or cannot
    be listed; "size" when it holds more than `max_entries` entries. Folder links inside the roots
    are followed (each real folder once), so nothing read through them escapes either."""
    bases = [os.path.realpath(r) for r in roots]

    def inside_roots(path) -> bool:
        real = os.path.realpath(path)
        return any(real == b or real.startswith(b.rstrip(os.sep) + os.sep) for b in bases)

    try:
        if not inside_roots(folder):
            return "link"
        seen, stack, count = {os.path.realpath(folder)}, [os.path.realpath(folder)], 0
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    count += 1
                    if count > max_entries:
                        return "size"
                    if not inside_roots(entry.path):
                        return "link"
                    if entry.is_dir():
                        real = os.path.realpath(entry.path)
                        if real not in seen:
                            seen.add(real)
                            stack.append(real)
    except (OSError, ValueError):
        return "link"
    return None


def find_checkpoints(roots: list[Path] | None = None) -> list[str]:
    """Run directories (`cmrl.runs.checkpoint.find_run_dirs`) under checkpoints/ then runs/ (and
    any extra roots), as paths relative to the repository where possible; a run whose files lead
    out of the roots (`leaves_roots`) is not listed."""
    roots = roots or [ROOT / "checkpoints", ROOT / "runs"]
    found: list[str] = []
    for base in roots:
        for run in find_run_dirs(base):
            name = display_path(run)
            if name not in found and leaves_roots(run, roots) is None:
                found.append(name)
    return found


def default_checkpoint(found: list[str]) -> str | None:
    if DEFAULT_CHECKPOINT in found:
        return DEFAULT_CHECKPOINT
    return found[0] if found else None


class AgentCache:
    """Loaded agents by run directory, reloaded when the files change (a run still training).

    Loading holds only that checkpoint's own lock (two requests for it load it once); the cache's
    lock is held just to look up and store, so a slow or refused load never blocks other users'
    rollouts. The caller checks that the run directory may be read (`roots.Roots`)."""

    def __init__(self, size: int = 4, max_bytes: int | None = APP_MAX_MODEL_BYTES):
        self.size, self.max_bytes = size, max_bytes
        self._items: OrderedDict[str, tuple[tuple, cmrl.TrainedAgent]] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(run: Path) -> tuple:
        out = []
        for name in ("config.json", "model.safetensors"):
            try:
                st = (run / name).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except (OSError, ValueError):
                out.append(None)
        return tuple(out)

    def _cached(self, key: str, stamp: tuple) -> cmrl.TrainedAgent | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1]
            return None

    def get(self, run: Path, label: str | None = None) -> cmrl.TrainedAgent:
        run = Path(run).resolve()
        key, label = str(run), label or display_path(run)
        stamp = self._stamp(run)
        agent = self._cached(key, stamp)
        if agent is not None:
            return agent
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            agent = self._cached(key, stamp)  # loaded by another request meanwhile
            if agent is not None:
                return agent
            try:
                agent = cmrl.load_agent(run, max_bytes=self.max_bytes)
                if agent.uses_text:
                    agent.encode_goal("warm up")  # load the text encoder now, not mid-rollout
            except user_errors() as e:  # the library's own list (cmrl/errors.py)
                raise InputError(f"Cannot load checkpoint {shown(label)}: "
                                 f"{_relative(user_message(e), run)}") from e
            except (OSError, ValueError, RuntimeError) as e:
                raise InputError(f"Cannot load checkpoint {shown(label)}: {type(e).__name__}: "
                                 f"{_relative(str(e), run)}") from e
            with self._lock:
                self._items[key] = (stamp, agent)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
            return agent


def _relative(message: str, run: Path) -> str:
    """A library message with the server's absolute path of the run shortened for the page."""
    return message.replace(str(run), display_path(run))


def describe_agent(agent: cmrl.TrainedAgent) -> str:
    info = agent.info
    net = agent.config.net
    backbone = agent_kind(agent.kind).backbone
    arch = {"modular": f"{net.num_layers} layers x {net.num_modules} modules x {net.module_width}",
            "care": f"{net.care_experts} x {net.care_width} mixture encoders, MLP "
                    f"{list(net.mlp_hidden)}"}.get(backbone, f"MLP {list(net.mlp_hidden)}")
    enc = info.get("text_encoder", {}).get("name", "none")
    before = info.get("trained_before")
    more = (f" (after {_count(before.get('env_steps'))} env steps in the run its weights came "
            "from)" if isinstance(before, dict) else "")
    return (f"**{agent.kind}** · {info.get('mode', '?')} · {_count(info.get('env_steps'))} env "
            f"steps, {_count(info.get('grad_steps'))} gradient steps{more} · {arch} · text encoder "
            f"{enc} · "
            f"prior data {info.get('prior_data', 'none')} · trained on "
            f"{', '.join(info.get('train_tasks', []))}; held out {', '.join(info.get('test_tasks', []))}")


def _count(value) -> str:
    """A counter from config.json (written by the trainer, but read from a file) for display."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


# -- inputs -----------------------------------------------------------------------------------------
def shown(value, limit: int = 60) -> str:
    """A value as echoed in a message: repr, cut to `limit` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**15:
        return f"a {value.bit_length() * 3 // 10 + 1}-digit number"
    text = repr(value) if isinstance(value, str) else repr(value) if not isinstance(
        value, (list, dict, tuple)) else f"a {type(value).__name__} of {len(value)}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def clean_text(value, what: str, max_chars: int = MAX_TEXT) -> str:
    """A short single-line text (a path or a name): stripped, printable, valid Unicode."""
    if not isinstance(value, str):
        raise InputError(f"{what} must be text, got {type(value).__name__}.")
    text = value.strip()
    if not text:
        raise InputError(f"{what} is empty.")
    if len(text) > max_chars:
        raise InputError(f"{what} has {len(text)} characters; at most {max_chars} are accepted.")
    kinds = {unicodedata.category(c) for c in text}
    if "Cs" in kinds:
        raise InputError(f"{what} holds invalid Unicode (a lone surrogate).")
    if kinds & {"Cc", "Cf", "Zl", "Zp"}:
        raise InputError(f"{what} holds control or invisible characters (such as NUL).")
    return text


def _number(value, what: str, expected: str) -> float | int:
    """A finite int or float from a number or a text, or InputError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{what} is empty: enter {expected}.")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{what} must be {expected}, got {shown(value)}.")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise InputError(f"{what} must be {expected}, got {shown(value)}.")
        if not NUMBER_TEXT.fullmatch(text):
            hint = (" written with the digits 0-9" if any(c.isdigit() for c in text)
                    and not text.isascii() else "")
            raise InputError(f"{what} must be {expected}{hint}, got {shown(text)}.")
        try:
            value = int(text)
        except ValueError:
            value = float(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{what} must be {expected}, got {value}.")
    return value


def parse_int(value, what: str, lo: int, hi: int) -> int:
    """A whole number in [lo, hi] from a number or text, or InputError saying what is expected."""
    expected = f"a whole number from {lo} to {hi}"
    n = _number(value, what, expected)
    if isinstance(n, float):
        if not n.is_integer():
            raise InputError(f"{what} must be {expected}, got {n}.")
        n = int(n)
    if not lo <= n <= hi:
        raise InputError(f"{what} must be from {lo} to {hi}, got {shown(n)}.")
    return n


def parse_float(value, what: str, lo: float, hi: float) -> float:
    """A finite number in (lo, hi] from a number or text, or InputError."""
    expected = f"a number above {lo:g} and at most {hi:g}"
    x = _number(value, what, expected)
    if isinstance(x, int) and abs(x) > 10**15:
        raise InputError(f"{what} must be {expected}, got {shown(x)}.")
    if not lo < x <= hi:
        raise InputError(f"{what} must be {expected}, got {x:g}.")
    return float(x)


def parse_scene(scene) -> str:
    if not isinstance(scene, str) or not scene.strip():
        raise InputError("No scene selected: pick a Meta-World v3 environment, e.g. window-close-v3.")
    scene = scene.strip()
    if scene not in SCENES:
        raise InputError(f"Unknown scene {shown(scene)}: pick a Meta-World v3 environment from the "
                         f"list (the ML4 tasks are {', '.join(ML4_TASKS)}).")
    return scene


def parse_camera(camera) -> str:
    if not isinstance(camera, str) or camera not in CAMERAS:
        raise InputError(f"Unknown camera {shown(camera, 40)}; choose one of {', '.join(CAMERAS)}.")
    return camera


def parse_choice(value, what: str, choices) -> str:
    """One of `choices` (strings), or InputError listing them."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{what} must be one of {', '.join(map(str, choices))}; got "
                         f"{shown(value, 40)}.")
    return value


INVISIBLE = {"Cf"}
"""Unicode categories dropped from a goal text: format characters (zero-width, direction marks)."""
MAX_INVISIBLE_SHARE = 0.5
"""A goal text more than this share invisible characters is refused, not cleaned."""
NON_WORDS = {"nan", "-nan", "inf", "-inf", "+inf", "infinity", "-infinity", "none", "null",
             "undefined", "true", "false"}


def parse_goal_text(goal, what: str = "The goal description") -> tuple[str, str | None]:
    """The goal text the encoder is given, and a note saying what was used when that is not just
    the text as typed (None otherwise). Invisible characters (zero-width, direction marks) are
    dropped and compatibility forms folded (NFKC: full-width letters become ASCII); a text with
    fewer visible characters than invisible ones is refused, as are control characters and lone
    surrogates (`validate_goal_text`). A text that describes nothing ("NaN", "null", "1e999", no
    letters) is encoded as typed, and the note says so."""
    def refuse(msg: str):
        return InputError(msg[0].upper() + msg[1:] if what == "The goal description"
                          else f"{what}: {msg}")

    dropped, folded = 0, False
    if isinstance(goal, str) and len(goal) <= 4 * MAX_TEXT:
        kinds = [unicodedata.category(c) for c in goal]
        if "Cs" not in kinds:  # a lone surrogate: validate_goal_text says so
            kept = "".join(c for c, k in zip(goal, kinds) if k not in INVISIBLE)
            dropped = len(goal) - len(kept)
            if kept.strip():  # nothing visible at all: validate_goal_text says so
                if dropped > MAX_INVISIBLE_SHARE * len("".join(goal.split())):
                    raise refuse(f"the goal description is mostly invisible characters ({dropped} "
                                 f"of {len(goal)}, such as zero-width spaces): type it as plain "
                                 "text")
                goal = unicodedata.normalize("NFKC", kept)
                folded = goal != kept
            else:
                dropped = 0
    try:
        text = validate_goal_text(goal)
    except GoalTextError as e:
        raise refuse(str(e)) from e
    changes = []
    if dropped:
        changes.append(f"{dropped} invisible character{'s' if dropped > 1 else ''} dropped")
    if folded:
        changes.append("compatibility forms folded (NFKC)")
    if changes:
        return text, f"Goal text used: {shown(text, 120)} ({'; '.join(changes)})."
    if not any(c.isalpha() for c in text) or text.lower() in NON_WORDS or NUMBER_TEXT.fullmatch(text):
        return text, (f"Goal text used: {shown(text, 120)}, as typed; it describes no goal, so the "
                      "agent acts on what it infers from its own steps.")
    return text, None


# -- memory -----------------------------------------------------------------------------------------
_release_lock = threading.Lock()
_release_state = {"running": False, "again": False}


def release_memory() -> None:
    """Hand what finished requests freed back to the system: a collection of the young garbage
    generations (a full one takes about a second here, holding the GIL while rollouts stream),
    then glibc's malloc_trim, which returns the free pages of every malloc arena. Without it most
    of what a closed env and its renderer freed stays resident (docs/public_page.md). No-op off
    glibc."""
    gc.collect(1)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def release_memory_soon() -> None:
    """`release_memory` in a thread of its own (it takes tens of ms on a large heap), called when a
    rollout or a long request ends. A call while one runs makes that one run once more."""
    with _release_lock:
        if _release_state["running"]:
            _release_state["again"] = True
            return
        _release_state["running"] = True

    def run():
        while True:
            release_memory()
            with _release_lock:
                if not _release_state["again"]:
                    _release_state["running"] = False
                    return
                _release_state["again"] = False

    threading.Thread(target=run, name="release-memory", daemon=True).start()
