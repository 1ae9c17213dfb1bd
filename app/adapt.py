"""Streaming rollouts for the Adapt and Compare tabs.

Each rollout runs in its own thread (`RolloutWorker`): the Meta-World env is built, rendered and
closed there, because an EGL context belongs to the thread that made it current, and gradio calls a
generator's `next()` from whichever worker thread is free. The worker writes an mp4 of every
episode as it goes (imageio's ffmpeg pipe encodes in a separate process) and hands every step to the
request's own queue, so frames never cross between users. The page-side generator drains that queue
and yields the newest frame (dropping none while it keeps up), the routing and posterior figures every
few steps, and a video after each episode.

A per-request `threading.Event` stops the worker: set by the Cancel button (through `Sessions`), by the
generator's `finally` when gradio stops iterating it, or when nobody has read the queue for a while.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmrl.experiments.routing_analysis import RoutingMean, cosine_similarity, js_similarity

from .figures import (PosteriorFigure, RoutingFigure, adaptation_figure, posterior_unavailable,
                      routing_unavailable)

FIGURE_EVERY = 5
"""Env steps between routing / posterior figure updates (the issue asks for at most 10)."""
STALL_S = 60.0
"""A worker whose queue nobody has read for this long stops (an abandoned request)."""
VIDEO_ROOT = Path(tempfile.gettempdir()) / "cmrl-app-videos"
VIDEO_FPS = 30


class Sessions:
    """Stop flags of the rollouts running for each browser session (or API client)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._flags: dict[str, set[threading.Event]] = {}

    def start(self, session: str) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self._flags.setdefault(session, set()).add(ev)
        return ev

    def finisher(self, session: str, ev: threading.Event, workers: int = 1):
        """A callback for each of `workers` threads: the last one to exit finishes the entry (so
        the count is right even if gradio never closes an abandoned generator)."""
        left = [workers]
        lock = threading.Lock()

        def done():
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self.finish(session, ev)
        return done

    def finish(self, session: str, ev: threading.Event) -> None:
        ev.set()
        with self._lock:
            flags = self._flags.get(session)
            if flags is not None:
                flags.discard(ev)
                if not flags:
                    del self._flags[session]

    def cancel(self, session: str) -> int:
        with self._lock:
            flags = list(self._flags.get(session, ()))
        for ev in flags:
            ev.set()
        return len(flags)

    def active(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._flags.values())


def clean_old_videos(max_age_s: float = 3 * 3600) -> None:
    if not VIDEO_ROOT.is_dir():
        return
    now = time.time()
    for d in VIDEO_ROOT.iterdir():
        try:
            if now - d.stat().st_mtime > max_age_s:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


@dataclass
class Rollout:
    """What one rollout asks for (validated by the caller)."""

    scene: str
    goal: str
    variation: int
    camera: str = "corner"
    episodes: int = 2
    eval_episodes: int = 1
    horizon: int | None = None
    size: int = 224
    seed: int = 0
    videos: bool = True


@dataclass
class Event:
    tag: str
    kind: str  # step | video | error | end
    record: object = None
    path: str | None = None
    error: BaseException | None = None


class RolloutWorker(threading.Thread):
    def __init__(self, agent, spec: Rollout, out: queue.Queue, stop: threading.Event, tag: str = "",
                 on_exit=None):
        super().__init__(daemon=True, name=f"rollout-{tag or spec.scene}")
        self.agent, self.spec, self.out, self.stop, self.tag = agent, spec, out, stop, tag
        self.on_exit = on_exit
        self.video_dir = VIDEO_ROOT / uuid.uuid4().hex if spec.videos else None
        self._last_put = time.time()
        self.steps = 0
        self.started = time.time()

    def _put(self, ev: Event) -> bool:
        if self.stop.is_set() and ev.kind == "end":
            try:  # the page may be gone: never wait for it once stopped
                self.out.put_nowait(ev)
            except queue.Full:
                pass
            return False
        while True:
            try:
                self.out.put(ev, timeout=0.2)
                self._last_put = time.time()
                return True
            except queue.Full:
                if self.stop.is_set() and ev.kind != "end":
                    return False
                if time.time() - self._last_put > STALL_S:
                    self.stop.set()  # nobody reads: the page went away
                    return False

    def _writer(self, episode: int):
        import imageio

        self.video_dir.mkdir(parents=True, exist_ok=True)
        path = self.video_dir / f"episode{episode + 1}.mp4"
        return path, imageio.get_writer(
            str(path), fps=VIDEO_FPS, codec="libx264", quality=6, macro_block_size=16,
            ffmpeg_log_level="error", output_params=["-preset", "ultrafast", "-movflags", "+faststart"])

    def run(self) -> None:
        s = self.spec
        writer, path = None, None
        gen = None
        try:
            gen = self.agent.rollout(s.scene, s.goal, variation=s.variation,
                                     adaptation_episodes=s.episodes, eval_episodes=s.eval_episodes,
                                     render=True, camera=s.camera, size=s.size, seed=s.seed,
                                     horizon=s.horizon, stop=self.stop)
            for rec in gen:  # (building the scene is locked in cmrl.envs.metaworld_env.make_scene)
                self.steps += 1
                if self.video_dir is not None:
                    if writer is None:
                        path, writer = self._writer(rec.episode)
                    writer.append_data(rec.frame)
                if not self._put(Event(self.tag, "step", rec)):
                    break
                if rec.done and writer is not None:
                    writer.close()
                    writer = None
                    if not self._put(Event(self.tag, "video", rec, path=str(path))):
                        break
                if self.stop.is_set():
                    break
        except BaseException as e:  # shown to the user by the page-side generator
            self._put(Event(self.tag, "error", error=e))
        finally:
            if gen is not None:
                gen.close()  # closes the env (and its GL context) in this thread
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    pass
            self._put(Event(self.tag, "end"))
            if self.on_exit is not None:
                self.on_exit()


def drain(q: queue.Queue, wait: float = 0.5, limit: int = 256) -> list[Event]:
    """Everything in the queue now (waiting up to `wait` s for the first item), up to and
    including the first finished episode's video: one batch holds at most one video, so a page
    that shows the latest one after each batch shows every episode's."""
    try:
        items = [q.get(timeout=wait)]
    except queue.Empty:
        return []
    while len(items) < limit and items[-1].kind != "video":
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            break
    return items


@dataclass
class EpisodeRow:
    episode: int
    phase: str
    success: bool
    ret: float
    steps: int
    video: str | None = None


@dataclass
class View:
    """Page-side state of one rollout stream: the latest record, figures and per-episode results."""

    agent: object
    spec: Rollout
    routing_fig: RoutingFigure | None = None
    posterior_fig: PosteriorFigure | None = None
    last: object = None
    last_fig_step: int = -10**9
    steps: int = 0
    episodes: list[EpisodeRow] = field(default_factory=list)
    routing_mean: RoutingMean = field(default_factory=RoutingMean)
    started: float = field(default_factory=time.time)
    frames_shown: int = 0
    frames_dir: Path = field(default_factory=lambda: VIDEO_ROOT / f"frames-{uuid.uuid4().hex}")
    adaptation: dict[int, list[float]] = field(default_factory=dict)
    """rl2 / maml: each episode's per-step adaptation signal (their records' `adaptation`)."""

    frame_step: int = -1

    def new_frame(self) -> str | None:
        """`frame_file()` if a step arrived since the last frame shown, else None."""
        if self.last is None or self.frame_step == self.steps:
            return None
        self.frame_step = self.steps
        return self.frame_file()

    def frame_file(self) -> str:
        """The newest frame as a JPEG file of its own. Yielding arrays would make gradio rewrite
        one cache file per identical image in place (truncate, then write) while another page
        may be downloading it; a file path is copied into the cache atomically instead. Gradio
        copies a yielded file before it asks for the next update, so three names rotate."""
        from PIL import Image

        self.frames_dir.mkdir(parents=True, exist_ok=True)
        path = self.frames_dir / f"frame{self.frames_shown % 3}.jpg"
        tmp = path.with_suffix(".tmp")
        Image.fromarray(self.last.frame).save(tmp, format="JPEG", quality=88)
        os.replace(tmp, path)
        self.frames_shown += 1
        return str(path)

    def close(self) -> None:
        shutil.rmtree(self.frames_dir, ignore_errors=True)

    def add(self, ev: Event) -> None:
        rec = ev.record
        if ev.kind == "step":
            self.steps += 1
            self.last = rec
            if rec.routing is not None:
                self.routing_mean.add(rec.routing)
            if hasattr(rec, "adaptation"):
                self.adaptation.setdefault(rec.episode, []).append(float(rec.adaptation))
            if rec.done:
                self.episodes.append(EpisodeRow(rec.episode, rec.phase, bool(rec.episode_success),
                                                float(rec.episode_return), rec.t))
        elif ev.kind == "video":
            for row in self.episodes:
                if row.episode == rec.episode:
                    row.video = ev.path

    @property
    def total_episodes(self) -> int:
        return self.spec.episodes + self.spec.eval_episodes

    def figures_due(self) -> bool:
        return self.last is not None and (self.steps - self.last_fig_step >= FIGURE_EVERY
                                          or self.last.done or self.last_fig_step < 0)

    def routing(self):
        rec = self.last
        if rec.routing is None:
            return routing_unavailable(self.agent.kind)
        if self.routing_fig is None:
            self.routing_fig = RoutingFigure(rec.routing, f"{self.agent.kind} actor routing")
        return self.routing_fig.render(rec.routing, f"episode {rec.episode + 1}, step {rec.t}")

    def posterior(self):
        rec = self.last
        if len(rec.z_mean) == 0 and self.adaptation:  # rl2, maml: what their adaptation moved
            eps = sorted(self.adaptation)
            phases = {r.episode: r.phase for r in self.episodes} | {rec.episode: rec.phase}
            return adaptation_figure(self.agent.kind,
                                     [f"{e + 1} ({phases.get(e, '')})" for e in eps],
                                     [float(np.mean(self.adaptation[e])) for e in eps])
        if len(rec.z_mean) == 0:
            return posterior_unavailable(self.agent.kind)
        if self.posterior_fig is None:
            self.posterior_fig = PosteriorFigure(len(rec.z_mean))
        return self.posterior_fig.render(rec.z_mean, rec.z_std, rec.num_transitions)

    def mark_figures(self) -> None:
        self.last_fig_step = self.steps

    def fps(self) -> float:
        dt = time.time() - self.started
        return self.steps / dt if dt > 0 else 0.0

    def marks(self) -> str:
        """Success and return of each finished episode: whether experience helped, at a glance."""
        return " → ".join(f"{'✓' if r.success else '✗'} {r.ret:.0f}" for r in self.episodes) or (
            "none yet")

    def status(self, done: bool = False, cancelled: bool = False) -> str:
        rec = self.last
        if rec is None:
            return "building the scene…" if not done else "no steps were run"
        head = ("**Cancelled.** " if cancelled else "**Done.** " if done else "")
        phase = ("adaptation (z sampled from the posterior)" if rec.phase == "adapt"
                 else "evaluation (posterior mean, deterministic)")
        return (f"{head}Episode **{rec.episode + 1}/{self.total_episodes}** · {phase} · step "
                f"{rec.t}/{self.spec.horizon or '?'}  \nreward **{rec.reward:.2f}** · return "
                f"**{rec.episode_return:.1f}** · success this episode: "
                f"**{'yes' if rec.episode_success else 'not yet'}** · transitions in context "
                f"{rec.num_transitions}  \nfinished episodes (success, return): {self.marks()} · "
                f"{self.fps():.1f} steps/s")

    def table(self) -> list[list]:
        return [[r.episode + 1, r.phase, "✓ success" if r.success else "✗ no success",
                 round(r.ret, 1), r.steps] for r in self.episodes]

    def videos(self) -> list[tuple[str, str]]:
        return [(r.video, f"episode {r.episode + 1} ({r.phase}) "
                          f"{'✓' if r.success else '✗'} return {r.ret:.0f}")
                for r in self.episodes if r.video]

    def summary(self) -> str:
        adapt = [r for r in self.episodes if r.phase == "adapt"]
        ev = [r for r in self.episodes if r.phase == "eval"]

        def rate(rows):
            return f"{sum(r.success for r in rows)}/{len(rows)}" if rows else "-"

        return (f"adaptation episodes: {rate(adapt)} successful "
                f"({' '.join('✓' if r.success else '✗' for r in adapt) or '-'}); "
                f"evaluation episodes: {rate(ev)} "
                f"({' '.join('✓' if r.success else '✗' for r in ev) or '-'})")


def routing_comparison(a: View, b: View) -> str:
    if a.routing_mean.count == 0 or b.routing_mean.count == 0:
        return "no routing to compare (a pearl actor is a plain MLP)"
    ma, mb = a.routing_mean.mean(), b.routing_mean.mean()
    gap = float(np.mean([np.abs(x - y).mean() for x, y in zip(ma, mb)]))
    return (f"mean routing of the two goals: cosine similarity {cosine_similarity(ma, mb):.3f}, "
            f"1 - Jensen-Shannon {js_similarity(ma, mb):.3f}, mean |difference| {gap:.3f}")
