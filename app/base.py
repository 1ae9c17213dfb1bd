"""What every tab of the page shares: the allowed checkpoints and the agent cache, the checkpoint row,
the rollout sessions and their cancelling, and the one way a refused input is answered
(`page_error`: one log line, no traceback).

Each tab is a class of its own (`adapt_tab.py`, `compare_tab.py`, `inspect_tab.py`,
`train_tab.py`, `results_tab.py`) built on `PageBase`; `ui.py` puts them on one page.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from pathlib import Path

import gradio as gr

from cmrl.envs.metaworld_env import CAMERAS
from cmrl.runs.checkpoint import CheckpointError, read_run_info

from .adapt import Rollout, Sessions
from .common import (ADAPT_OPENING, MAX_EPISODES, NUM_VARIATIONS, AgentCache, InputError,
                     default_checkpoint, describe_agent, display_path, find_checkpoints, parse_camera,
                     parse_goal_text, parse_int, parse_scene, release_memory_soon, resolve_path,
                     SCENES)
from .inputs import DropdownInput, NumberInput
from .jobs import JobManager
from .results import results_roots
from .roots import CHECKPOINT_UNAVAILABLE, Roots

log = logging.getLogger("cmrl.app")
ROLLOUT_CONCURRENCY = 4
"""Rollouts (Adapt, Compare, Inspect together) running at once; further ones wait in the queue."""
MAX_MESSAGE = 800
"""Longest error message shown (a safety net: messages cut what they echo far shorter)."""


def page_error(e: Exception) -> gr.Error:
    """The page's answer to an input it cannot use: logged as one line, shown without traceback."""
    msg = str(e)
    msg = msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE - 1] + "…"
    log.info("refused: %s", " ".join(msg.split())[:300])
    return gr.Error(msg, duration=12, print_exception=False)


class PageSessions(Sessions):
    """The rollouts running for each page session; when one ends (its env and renderer closed),
    what it freed goes back to the system (`release_memory_soon`)."""

    def finish(self, session: str, ev) -> None:
        super().finish(session, ev)
        release_memory_soon()


def session_key(request, tab: str, new: bool = True) -> str:
    """The key of one tab's rollouts in one page (or API client) session."""
    session = getattr(request, "session_hash", None)
    if not session:
        session = uuid.uuid4().hex if new else ""
    return f"{session}:{tab}"


class PageBase:
    """The state every tab reads: allowed roots, the training jobs, loaded agents, rollout
    sessions, and the Train tab's cached estimates."""

    def __init__(self, checkpoint_roots: list[Path] | None = None, runs_dir: Path | None = None,
                 results_root: Path | None = None, default: str | None = None,
                 hosted: bool | None = None, max_train_steps: int | None = None,
                 extra_roots: list[Path] | None = None, max_train_seconds: float | None = None):
        """`checkpoint_roots`: where run directories are listed and loaded from (default
        checkpoints/ and runs/); `extra_roots` add to them and to the dataset roots (default:
        CMRL_ALLOWED_ROOTS). The runs dir and the `default` checkpoint are always allowed."""
        self.access = Roots(checkpoint_roots, extra_roots)
        self.jobs = JobManager(runs_dir, hosted=hosted, max_steps=max_train_steps,
                               max_seconds=max_train_seconds, roots=self.access)
        self.hosted = self.jobs.hosted
        self.access.add_checkpoint_root(self.jobs.runs_dir)
        if default:
            self.access.add_checkpoint_root(resolve_path(default))
        self.roots = self.access.checkpoints
        self.results_roots = results_roots(results_root)
        """Benchmark name -> the folder its shipped results are read from (the first is shown first)."""
        self.default = default
        self.agents = AgentCache()
        self.sessions = PageSessions()
        self._estimates: dict[tuple, str] = {}

    def checkpoints(self) -> list[str]:
        found = find_checkpoints(self.roots)
        if self.default and self.default not in found:
            found.insert(0, self.default)
        return found

    def default_checkpoint(self, found: list[str]) -> str | None:
        return self.default or default_checkpoint(found)

    def adapt_opening(self, found: list[str]) -> tuple[str | None, str]:
        """(checkpoint, scene) of the Adapt tab at first: ADAPT_OPENING where it is found and the
        page was given no default, else the default checkpoint on held-out window-close."""
        if not self.default and ADAPT_OPENING[0] in found:
            return ADAPT_OPENING
        return self.default_checkpoint(found), "window-close-v3"

    def _agent(self, checkpoint):
        """The agent of a checkpoint a visitor named: only run directories under the allowed roots
        (on a hosted page: only those listed), one neutral message for anything else."""
        if checkpoint is None or (isinstance(checkpoint, str) and not checkpoint.strip()):
            raise InputError("No checkpoint selected. Train one in the Train tab (or with "
                             "`python -m cmrl train ...`), then press ↻ next to the checkpoint list.")
        if self.hosted and (not isinstance(checkpoint, str)
                            or checkpoint.strip() not in self.checkpoints()):
            raise InputError(CHECKPOINT_UNAVAILABLE.format(
                roots=", ".join(f"{display_path(r)}/" for r in self.roots)))
        run = self.access.checkpoint(checkpoint)
        return self.agents.get(run, checkpoint.strip())

    def refresh_checkpoints(self, current):
        found = self.checkpoints()
        current = current if isinstance(current, str) else None
        value = current if current in found else self.default_checkpoint(found)
        return gr.update(choices=found, value=value)

    def checkpoint_info(self, checkpoint) -> str:
        if not checkpoint:
            return ("**No checkpoint.** None was found in `checkpoints/` or `runs/`: train one in "
                    "the **Train** tab (or with `python -m cmrl train ...`), then press ↻.")
        try:
            return describe_agent(self._agent(checkpoint))
        except InputError as e:
            return f"⚠️ {e}"

    def checkpoint_horizon(self, checkpoint) -> int | None:
        """The episode length the checkpoint was trained with (`config.benchmark.horizon` in its
        config.json), clamped to the sliders' 10-500; None when it cannot be read here."""
        if not isinstance(checkpoint, str) or not checkpoint.strip():
            return None
        if self.hosted and checkpoint.strip() not in self.checkpoints():
            return None
        try:
            info = read_run_info(self.access.checkpoint(checkpoint))
        except (InputError, CheckpointError, OSError, ValueError):
            return None
        h = ((info.get("config") or {}).get("benchmark") or {}).get("horizon")
        if not isinstance(h, int) or isinstance(h, bool):
            return None
        return max(10, min(500, h))

    def horizon_update(self, checkpoint):
        """The episode-length slider follows the picked checkpoint's training horizon."""
        h = self.checkpoint_horizon(checkpoint)
        return gr.skip() if h is None else gr.update(value=h)

    def _ckpt_row(self, found, default):
        with gr.Row(equal_height=True):
            ck = DropdownInput(found, value=default, label="checkpoint (run directory)",
                             allow_custom_value=True, scale=8)
            refresh = gr.Button("↻", scale=0, min_width=50)
        info = gr.Markdown(self.checkpoint_info(default) if default else self.checkpoint_info(None),
                           elem_classes="small-md")
        refresh.click(self.refresh_checkpoints, ck, ck, api_visibility="private")
        ck.change(self.checkpoint_info, ck, info, api_visibility="private", show_progress="hidden")
        return ck

    @staticmethod
    def _scene_controls(scene_label: str, value: str = "window-close-v3"):
        """The scene, goal-variation and camera inputs of a rollout tab (inside the caller's row)."""
        scene = DropdownInput(SCENES, value=value, allow_custom_value=True, label=scene_label)
        variation = NumberInput(0, precision=0, label=f"goal variation (0-{NUM_VARIATIONS - 1})")
        camera = DropdownInput(list(CAMERAS), value="corner", label="camera")
        return scene, variation, camera

    def _rollout_spec(self, scene, goal, variation, camera, episodes, eval_episodes, horizon,
                      size, what: str = "The goal description") -> Rollout:
        """The rollout asked for, or InputError; a goal text used otherwise than as typed is
        said in a note (`parse_goal_text`)."""
        goal, note = parse_goal_text(goal, what)
        spec = Rollout(scene=parse_scene(scene), goal=goal,
                       variation=parse_int(variation, "The goal variation", 0, NUM_VARIATIONS - 1),
                       camera=parse_camera(camera),
                       episodes=parse_int(episodes, "Adaptation episodes", 0, MAX_EPISODES),
                       eval_episodes=parse_int(eval_episodes, "Evaluation episodes", 0, 5),
                       horizon=parse_int(horizon, "The episode length", 10, 500),
                       size=parse_int(size, "The frame size", 64, 640))
        if spec.episodes + spec.eval_episodes == 0:
            raise InputError("Nothing to run: ask for at least one adaptation or evaluation episode.")
        if note:
            gr.Info(note if what == "The goal description" else f"{what}: {note}")
        return spec

    def _busy_note(self) -> None:
        busy = self.sessions.active()
        if busy >= 1:
            gr.Warning(f"{busy} other rollout{'s are' if busy > 1 else ' is'} running on this "
                       "machine right now; they share its CPU, so yours may stream more slowly.")

    @staticmethod
    def _rollout_error(e: BaseException) -> gr.Error:
        if isinstance(e, (ValueError, InputError)):
            return page_error(e)
        log.error("rollout failed: %s", "".join(traceback.format_exception(e)))
        return gr.Error(f"The rollout failed: {type(e).__name__}: {str(e)[:MAX_MESSAGE]}",
                        duration=15, print_exception=False)

    def _cancel(self, request, tab: str) -> str:
        n = self.sessions.cancel(session_key(request, tab, new=False))
        return "cancelled" if n else "nothing was running"
