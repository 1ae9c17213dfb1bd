"""The demo page: Adapt, Compare goals, Routing inspector, Train, Results.

Layout and event wiring; the work is in `adapt.py` (streamed rollouts), `jobs.py` (training
processes), `results.py` (shipped results) and `cmrl` itself (rollouts, routing analysis). Every
handler turns bad input into a `gr.Error` with a message that says what to do (logged as one line,
no traceback); every input reaches its handler as sent (`inputs.py`), checkpoints and datasets are
read only from the allowed roots (`roots.py`).
"""

from __future__ import annotations

import logging
import os
import queue
import time
import traceback
import uuid
from pathlib import Path

import gradio as gr

from cmrl.agent_kinds import agent_kind
from cmrl.envs import CAMERAS
from cmrl.logger import read_metrics
from cmrl.routing_analysis import METRICS, nearest_tasks, similarity_matrix, task_context
from cmrl.tasks import GOAL_TEXTS, canonical_goal_text

from .adapt import (SCENE_LOCK, Rollout, RolloutWorker, Sessions, View, clean_old_videos, drain,
                    routing_comparison)
from .common import (FRAME_SIZES, GOAL_EXAMPLES, MAX_EPISODES, ML4_TASKS, NUM_VARIATIONS,
                     SCENES, AgentCache, InputError, clean_text, default_checkpoint,
                     describe_agent, display_path, find_checkpoints, parse_camera, parse_choice,
                     parse_float, parse_goal, parse_int, parse_scene, resolve_path, shown)
from .figures import (mean_routing_figure, message_figure, return_curves_figure,
                      similarity_figure, success_bars_figure, training_figure)
from .inputs import DropdownInput, NumberInput, RadioInput, SliderInput
from .jobs import (AGENTS, CUSTOM, DEVICES, PRIOR_DATA, UPDATES_PER_STEP, JobError, JobManager,
                   RecipeSpec, TrainSpec, device_summary, log_tail, recipe_choices)
from .results import DEFAULT_RESULTS_ROOT, load_results, table_rows
from .roots import CHECKPOINT_UNAVAILABLE, Roots, inside
from .train_tab import estimate_text, progress_html, recipe_summary

log = logging.getLogger("cmrl.app")
ROLLOUT_CONCURRENCY = 4
QUEUE_SIZE = 32
STATE_SESSIONS = int(os.environ.get("CMRL_APP_SESSIONS", "200"))
"""Sessions whose state gradio keeps in memory. Every API call without a session makes a new one,
holding ~2 MB here (measured); gradio's default of 10,000 would let anonymous calls fill 20 GB."""
M_ARENA_MAX = -8  # glibc's mallopt parameter
CANONICAL_TEXTS = {t for texts in GOAL_TEXTS.values() for t in texts}
CSS = """
#frame img, .cmp-frame img {width: 100%; height: 100%; object-fit: contain;}
.small-md p {font-size: 0.92em;}
"""


MAX_MESSAGE = 800
"""Longest error message shown (a safety net: messages cut what they echo far shorter)."""


def _error(e: Exception) -> gr.Error:
    """The page's answer to an input it cannot use: logged as one line, shown without traceback."""
    msg = str(e)
    msg = msg if len(msg) <= MAX_MESSAGE else msg[:MAX_MESSAGE - 1] + "…"
    log.info("refused: %s", " ".join(msg.split())[:300])
    return gr.Error(msg, duration=12, print_exception=False)


class App:
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
        self.results_root = Path(results_root) if results_root else DEFAULT_RESULTS_ROOT
        self.default = default
        self.agents = AgentCache()
        self.sessions = Sessions()
        self._estimates: dict[tuple, str] = {}

    # -- checkpoints --------------------------------------------------------------------------------
    def checkpoints(self) -> list[str]:
        found = find_checkpoints(self.roots)
        if self.default and self.default not in found:
            found.insert(0, self.default)
        return found

    def default_checkpoint(self, found: list[str]) -> str | None:
        return self.default or default_checkpoint(found)

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
        from cmrl.checkpoint import CheckpointError, read_run_info

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

    # -- Adapt ----------------------------------------------------------------------------------------
    def _rollout_spec(self, scene, goal, variation, camera, episodes, eval_episodes, horizon,
                      size, what: str = "The goal description") -> Rollout:
        spec = Rollout(scene=parse_scene(scene), goal=parse_goal(goal, what),
                       variation=parse_int(variation, "The goal variation", 0, NUM_VARIATIONS - 1),
                       camera=parse_camera(camera),
                       episodes=parse_int(episodes, "Adaptation episodes", 0, MAX_EPISODES),
                       eval_episodes=parse_int(eval_episodes, "Evaluation episodes", 0, 5),
                       horizon=parse_int(horizon, "The episode length", 10, 500),
                       size=parse_int(size, "The frame size", 64, 640))
        if spec.episodes + spec.eval_episodes == 0:
            raise InputError("Nothing to run: ask for at least one adaptation or evaluation episode.")
        return spec

    def _busy_note(self) -> None:
        busy = self.sessions.active()
        if busy >= 1:
            gr.Warning(f"{busy} other rollout{'s are' if busy > 1 else ' is'} running on this "
                       "machine right now; they share its CPU, so yours may stream more slowly.")

    def adapt(self, checkpoint, scene, goal, variation, camera, episodes, eval_episodes, horizon,
              size, request: gr.Request):
        try:
            agent = self._agent(checkpoint)
            spec = self._rollout_spec(scene, goal, variation, camera, episodes, eval_episodes,
                                      horizon, size)
        except InputError as e:
            raise _error(e)
        note = agent_kind(agent.kind).goal_text_note
        if note:
            gr.Info(note)
        self._busy_note()
        session = _session(request, "adapt")
        stop = self.sessions.start(session)
        q: queue.Queue = queue.Queue(maxsize=64)
        worker = RolloutWorker(agent, spec, q, stop, on_exit=self.sessions.finisher(session, stop))
        view = View(agent, spec)
        clean_old_videos()
        worker.start()
        try:
            yield (None, gr.skip(), gr.skip(), "building the scene and its renderer…", None, [], [])
            ended = False
            while not ended:
                events = drain(q, 0.5)
                if not events:
                    if not worker.is_alive() and q.empty():
                        break
                    continue
                new_video, error = False, None
                for ev in events:
                    if ev.kind == "end":
                        ended = True
                    elif ev.kind == "error":
                        error = ev.error
                    else:
                        view.add(ev)
                        new_video |= ev.kind == "video"
                if error is not None:
                    raise self._rollout_error(error)
                if view.last is None:
                    continue
                figs = view.figures_due()
                out = (view.new_frame() or gr.skip(), view.routing() if figs else gr.skip(),
                       view.posterior() if figs else gr.skip(), view.status(),
                       (view.videos()[-1][0] if view.videos() else None) if new_video else gr.skip(),
                       view.videos() if new_video else gr.skip(),
                       view.table() if new_video else gr.skip())
                if figs:
                    view.mark_figures()
                yield out
            cancelled = stop.is_set() and len(view.episodes) < view.total_episodes
            if view.last is not None:
                yield (gr.skip(), view.routing(), view.posterior(),
                       view.status(done=True, cancelled=cancelled) + "  \n**Summary:** "
                       + view.summary(), gr.skip(), view.videos(), view.table())
        finally:
            self.sessions.finish(session, stop)
            view.close()

    @staticmethod
    def _rollout_error(e: BaseException) -> gr.Error:
        if isinstance(e, (ValueError, InputError)):
            return _error(e)
        log.error("rollout failed: %s", "".join(traceback.format_exception(e)))
        return gr.Error(f"The rollout failed: {type(e).__name__}: {str(e)[:MAX_MESSAGE]}",
                        duration=15, print_exception=False)

    def cancel(self, request: gr.Request) -> str:
        """Stops this page's Adapt rollout (the thread stops within a step)."""
        return self._cancel(request, "adapt")

    def cancel_compare(self, request: gr.Request) -> str:
        return self._cancel(request, "compare")

    def cancel_inspect(self, request: gr.Request) -> str:
        return self._cancel(request, "inspect")

    def _cancel(self, request, tab: str) -> str:
        n = self.sessions.cancel(_session(request, tab, new=False))
        return "cancelled" if n else "nothing was running"

    # -- Compare goals --------------------------------------------------------------------------------
    def compare(self, checkpoint, scene, goal_a, goal_b, variation, camera, episodes, horizon,
                request: gr.Request):
        try:
            agent = self._agent(checkpoint)
            spec_a = self._rollout_spec(scene, goal_a, variation, camera, episodes, 0, horizon, 224,
                                        "Goal A")
            spec_b = self._rollout_spec(scene, goal_b, variation, camera, episodes, 0, horizon, 224,
                                        "Goal B")
        except InputError as e:
            raise _error(e)
        spec_a.videos = spec_b.videos = False
        if not agent.uses_text:
            gr.Warning(f"A {agent.kind} agent does not read goal texts: the two sides differ only "
                       "by chance. Pick a checkpoint that reads the text (cmrl, care) to see what "
                       "the words change.")
        self._busy_note()
        session = _session(request, "compare")
        stop = self.sessions.start(session)
        q: queue.Queue = queue.Queue(maxsize=128)
        done = self.sessions.finisher(session, stop, workers=2)
        workers = {t: RolloutWorker(agent, s, q, stop, tag=t, on_exit=done)
                   for t, s in (("A", spec_a), ("B", spec_b))}
        views = {"A": View(agent, spec_a), "B": View(agent, spec_b)}
        for w in workers.values():
            w.start()
        try:
            yield (None, gr.skip(), "building the scene…", None, gr.skip(), "building the scene…",
                   "running…")
            ended: set[str] = set()
            while len(ended) < 2:
                events = drain(q, 0.5)
                if not events:
                    if not any(w.is_alive() for w in workers.values()) and q.empty():
                        break
                    continue
                for ev in events:
                    if ev.kind == "end":
                        ended.add(ev.tag)
                    elif ev.kind == "error":
                        raise self._rollout_error(ev.error)
                    else:
                        views[ev.tag].add(ev)
                out = []
                for tag in ("A", "B"):
                    v = views[tag]
                    if v.last is None:
                        out += [gr.skip(), gr.skip(), "building the scene…"]
                        continue
                    figs = v.figures_due()
                    out += [v.new_frame() or gr.skip(), v.routing() if figs else gr.skip(),
                            v.status()]
                    if figs:
                        v.mark_figures()
                yield tuple(out) + ("running…",)
            a, b = views["A"], views["B"]
            outcome = (f"**Goal A** “{spec_a.goal}”: {a.summary()}  \n"
                       f"**Goal B** “{spec_b.goal}”: {b.summary()}  \n{routing_comparison(a, b)}")
            yield (gr.skip(), a.routing() if a.last is not None else gr.skip(),
                   a.status(done=True) if a.last is not None else "no steps",
                   gr.skip(), b.routing() if b.last is not None else gr.skip(),
                   b.status(done=True) if b.last is not None else "no steps", outcome)
        finally:
            self.sessions.finish(session, stop)
            for v in views.values():
                v.close()

    # -- Routing inspector ----------------------------------------------------------------------------
    def inspect(self, checkpoint, tasks, episodes, variations, horizon, metric,
                request: gr.Request):
        try:
            agent = self._agent(checkpoint)
            if isinstance(tasks, str):
                tasks = [tasks]
            if tasks is not None and not isinstance(tasks, list):
                raise InputError(f"Tasks must be a list of scene names, got {shown(tasks)}.")
            if len(tasks or []) > 12:
                raise InputError("Pick at most 12 tasks.")
            tasks = list(dict.fromkeys(parse_scene(t) for t in (tasks or [])))
            if len(tasks) < 1:
                raise InputError("Pick at least one task (two or more for a similarity matrix).")
            episodes = parse_int(episodes, "Episodes per variation", 1, 5)
            variations = parse_int(variations, "Goal variations per task", 1, 5)
            horizon = parse_int(horizon, "The episode length", 10, 500)
            metric = parse_choice(metric, "The similarity", list(METRICS))
        except InputError as e:
            raise _error(e)
        if not agent.has_routing:
            raise _error(InputError(f"{agent_kind(agent.kind).no_routing_note}: nothing to "
                                    "inspect. Pick a cmrl or sm checkpoint."))
        session = _session(request, "inspect")
        stop = self.sessions.start(session)
        profiles, contexts, rows = {}, {}, []
        train_tasks = list(agent.info.get("train_tasks", []))
        try:
            for i, task in enumerate(tasks):
                yield (gr.skip(), gr.skip(), gr.skip(),
                       f"rolling out {task} ({i + 1}/{len(tasks)}): {variations} variation(s) x "
                       f"(1 text-only + {episodes} adaptation + 1 adapted episode) of {horizon} "
                       "steps…")
                try:
                    res = task_context(agent, task, canonical_goal_text(task), episodes,
                                       list(range(variations)), horizon, stop=stop,
                                       scene_lock=SCENE_LOCK)
                except ValueError as e:  # NoRoutingError included
                    raise _error(e)
                if stop.is_set():
                    break
                if res.routing_adaptation is None:
                    raise _error(InputError(f"{agent_kind(agent.kind).no_routing_note}: nothing "
                                            "to inspect. Pick a cmrl or sm checkpoint."))
                profiles[task], contexts[task] = res.routing_adaptation, res
                nearest = nearest_tasks(contexts, train_tasks, metric)
                rows = [_inspect_row(t, c, nearest[t]) for t, c in contexts.items()]
                sim = (similarity_figure(*similarity_matrix(profiles, metric), metric)
                       if len(profiles) > 1 else message_figure("the similarity matrix needs two "
                                                                "tasks or more", 420))
                yield (mean_routing_figure(profiles), sim, rows,
                       f"{len(profiles)}/{len(tasks)} tasks done")
            yield (gr.skip(), gr.skip(), rows,
                   f"**Done.** Mean actor routing over every step of {episodes} adaptation "
                   f"episode(s) x {variations} goal variation(s) per task (goal text: the task's "
                   "canonical description). The table says which meta-train task each task's "
                   "routing and z are nearest to, from the goal text alone (a deterministic "
                   "episode at the prior) and after adaptation (one at the posterior), compared "
                   "with the meta-train tasks' own adapted routing and z (only those picked "
                   f"above: {', '.join(t for t in train_tasks if t in contexts) or 'none'}). "
                   f"Similarity: {metric} "
                   + {"cosine": "(cosine of the flattened routing)",
                      "centered-cosine": "(cosine of the flattened routing minus uniform routing "
                                         "1/n: +1 same favourite modules, -1 opposite)",
                      "jensen-shannon": "(1 - mean Jensen-Shannon divergence of corresponding "
                                        "routing rows, base 2)"}[metric])
        finally:
            self.sessions.finish(session, stop)

    # -- Train ----------------------------------------------------------------------------------------
    def train_launch(self, agent, benchmark, steps, seed, prior_data, offline, device, name,
                     horizon, envs_per_task, warmup_steps, updates_per_step, eval_every,
                     checkpoint_every):
        try:
            def blank(v) -> bool:
                return v is None or (isinstance(v, str) and not v.strip())

            def opt_int(v, what, field):
                return None if blank(v) else parse_int(v, what, *self.jobs.limits(field))

            def opt_text(v, what):
                return None if blank(v) else clean_text(v, what)

            spec = TrainSpec(agent=parse_choice(agent, "The agent", AGENTS),
                             benchmark=clean_text(benchmark, "The benchmark", 80),
                             steps=parse_int(steps, "Steps", 1, 10**9),
                             seed=parse_int(seed, "The seed", *self.jobs.limits("seed")),
                             prior_data=parse_choice(prior_data, "Prior data", PRIOR_DATA),
                             offline=opt_text(offline, "The offline dataset"),
                             device=parse_choice(device, "The device", DEVICES),
                             name=opt_text(name, "The run name"),
                             horizon=opt_int(horizon, "The horizon", "horizon"),
                             envs_per_task=opt_int(envs_per_task, "Envs per task", "envs_per_task"),
                             warmup_steps=opt_int(warmup_steps, "Warm-up steps", "warmup_steps"),
                             updates_per_step=None if blank(updates_per_step) else parse_float(
                                 updates_per_step, "Updates per env step", *UPDATES_PER_STEP),
                             eval_every=opt_int(eval_every, "Evaluate every", "eval_every"),
                             checkpoint_every=opt_int(checkpoint_every, "Checkpoint every",
                                                      "checkpoint_every"))
            st, notes = self.jobs.launch(spec)
        except (InputError, JobError) as e:
            raise _error(e)
        return self._launched(st, notes)

    def _launched(self, st, notes):
        for n in notes:
            gr.Warning(n)
        if st.state == "queued":
            text = (f"Queued **{st.name}** (position {st.queue_position}): it starts when the "
                    f"running run ends. `{st.command}`")
        else:
            text = (f"Launched **{st.name}** (pid {st.pid}): `{st.command}`  \nlogs: "
                    f"`{display_path(st.run_dir / 'train.log')}`")
        if notes:
            text += "  \n" + "  \n".join(f"note: {n}" for n in notes)
        return text, gr.update(choices=self.run_choices(), value=st.name)

    def train_recipe(self, recipe, benchmark, seed, device, name):
        """Launches a library recipe (`python -m cmrl recipe ...`), or queues it while a run runs."""
        try:
            choices = [v for _, v in recipe_choices()]
            recipe = parse_choice(recipe, "The recipe", choices)
            if recipe == CUSTOM:
                raise InputError("The custom recipe launches with the trainer's flags: open "
                                 "*custom run* and press **Launch custom run** (API: train_launch).")
            spec = RecipeSpec(recipe=recipe,
                              benchmark=clean_text(benchmark, "The benchmark", 80),
                              seed=parse_int(seed, "The seed", *self.jobs.limits("seed")),
                              device=parse_choice(device, "The device", DEVICES),
                              name=None if name is None or (isinstance(name, str)
                                                            and not name.strip())
                              else clean_text(name, "The run name"))
            st, notes = self.jobs.launch(spec)
        except (InputError, JobError) as e:
            raise _error(e)
        return self._launched(st, notes)

    def train_cancel(self, run):
        """Drops a queued run from the queue; a running one is stopped (like Stop)."""
        try:
            name = self._job_name(run)
            was = self.jobs.status(name).state
            st = self.jobs.cancel(name)
        except (InputError, JobError) as e:
            raise _error(e)
        if was == "queued":
            return f"Cancelled **{st.name}**: it left the queue without running."
        return f"Stopping **{st.name}** (SIGINT to its process group; the last checkpoint is kept)."

    def train_estimate(self, recipe, benchmark, device):
        """How long the recipe takes on this machine (`cmrl.recipes.estimate_seconds`: a few
        updates timed here, a couple of seconds); cached per recipe, benchmark and device."""
        try:
            choices = [v for _, v in recipe_choices()]
            recipe = parse_choice(recipe, "The recipe", choices)
            if recipe == CUSTOM:
                return "No estimate for a custom run (its length depends on the flags)."
            if self.hosted:
                raise InputError("Training is switched off on this hosted demo page, so there is "
                                 "nothing to estimate.")
            benchmark = clean_text(benchmark, "The benchmark", 80)
            device = parse_choice(device, "The device", DEVICES)
            key = (recipe, benchmark, device)
            if key not in self._estimates:
                est = self.jobs.estimate(recipe, benchmark, device)
                self._estimates[key] = estimate_text(recipe, benchmark, device, est)
            return self._estimates[key]
        except (InputError, JobError) as e:
            raise _error(e)

    def train_recipe_changed(self, recipe, benchmark, device):
        """The recipe's description, its cached estimate (else how to get one), the custom section
        open for custom, the recipe Launch button hidden for custom."""
        custom = recipe == CUSTOM
        key = tuple(v if isinstance(v, str) else "" for v in (recipe, benchmark, device))
        est = self._estimates.get(key) or ("" if custom else
                                           "Press **estimate** for the time on this machine.")
        return (recipe_summary(recipe if isinstance(recipe, str) else ""), est,
                gr.update(open=custom), gr.update(visible=not custom))

    def train_stop(self, run):
        try:
            st = self.jobs.stop(self._job_name(run))
        except (InputError, JobError) as e:
            raise _error(e)
        return f"Stopping **{st.name}** (SIGINT to its process group; the last checkpoint is kept)."

    def train_resume(self, run, steps, device):
        try:
            name = self._job_name(run)
            blank = steps is None or (isinstance(steps, str) and not steps.strip())
            steps = None if blank else parse_int(steps, "Steps", 1, 10**9)
            device = None if device is None else parse_choice(device, "The device", DEVICES)
            st, notes = self.jobs.resume(name, steps, device)
        except (InputError, JobError) as e:
            raise _error(e)
        for n in notes:
            gr.Warning(n)
        if st.state == "queued":
            return (f"Queued the resume of **{st.name}** (position {st.queue_position}): it "
                    "starts when the running run ends.")
        return f"Resumed **{st.name}** (pid {st.pid}): `{st.command}`"

    def _job_name(self, run) -> str:
        """A run launched by this app (by any client, listed or not on its page), or InputError."""
        if run is None or (isinstance(run, str) and not run.strip()):
            raise InputError("Pick a run in the list first.")
        run = clean_text(run, "The run name", 100)
        if run not in self.jobs.names():
            raise InputError(f"{shown(run)} was not launched from this app: only app runs can be "
                             "stopped or resumed here (use `python -m cmrl train --resume`).")
        return run

    def run_choices(self) -> list[str]:
        names = self.jobs.names()
        others = []
        for c in find_checkpoints(self.roots):
            p = resolve_path(c)
            if not inside(p, self.jobs.runs_dir) and (p / "metrics.jsonl").is_file():
                others.append(c)
        return names + others

    def _run_dir(self, run) -> Path | None:
        if not run or not isinstance(run, str):
            return None
        if run in self.jobs.names():
            return self.jobs.run_dir(run)
        if run in self.run_choices():
            return resolve_path(run)
        return None

    def jobs_table(self) -> list[list]:
        rows = []
        for j in self.jobs.list():
            rows.append([j.name, j.state, j.what, j.benchmark, j.phase or "", j.progress, j.eta,
                         j.device, time.strftime("%Y-%m-%d %H:%M", time.localtime(j.started))
                         if j.started else "", j.pid or ""])
        return rows

    def train_refresh(self, run, shown, known):
        """Timer tick: the job list and run choices (only when they changed, so an open dropdown
        is not disturbed), the selected run's curves (only when its metrics.jsonl changed), its
        status and log, and the checkpoint lists of the other tabs when a checkpoint appeared."""
        known = dict(known or {})
        try:
            self.jobs.pump()  # a queued run whose turn came while no watcher was there
        except JobError:
            pass
        choices = self.run_choices()
        run_update = gr.skip()
        if choices != known.get("runs"):
            run_update = gr.update(choices=choices, value=run if run in choices else None)
            known["runs"] = choices
        table = self.jobs_table()
        table_update = gr.skip()
        if table != known.get("table"):
            table_update = table
            known["table"] = table
        path = self._run_dir(run)
        curves, status, logs = gr.skip(), "", ""
        panel = progress_html(None)
        stamp = None
        if path is not None:
            try:
                st = (path / "metrics.jsonl").stat()
                stamp = f"{path}:{st.st_mtime_ns}:{st.st_size}"
            except OSError:
                stamp = f"{path}:none"
            if stamp != shown:
                rows = read_metrics(path, max_rows=5000)
                x = "grad_steps" if rows and all(r.get("env_steps", 0) == 0 for r in rows) else "step"
                curves = training_figure(rows, f"{run}: {len(rows)} metric rows", x)
            if run in self.jobs.names():
                j = self.jobs.status(run)
                panel = progress_html(j)
                steps = j.progress if j.state in ("queued", "cancelled") else f"{j.progress} steps"
                status = (f"**{j.name}**: {j.state} · {steps} · device {j.device} · "
                          f"`{j.command}`" + (f"\n\n```\n{j.message}\n```" if j.message else ""))
            else:
                status = f"**{run}**: not launched from this app (curves only)."
            logs = log_tail(path, 25)
        elif shown is not None:
            curves = message_figure("pick a run to see its curves", 420)
        found = self.checkpoints()
        ck_update = gr.skip()
        if "ckpts" in known and found != known["ckpts"]:
            ck_update = gr.update(choices=found)
        known["ckpts"] = found
        return (table_update, run_update, curves, status, logs, ck_update, ck_update, ck_update,
                panel, stamp if path is not None else None, known)

    # -- Results --------------------------------------------------------------------------------------
    def results(self, protocol):
        try:
            protocol = parse_choice(protocol or "cmrl", "The evaluation protocol",
                                    ("cmrl", "metaworld"))
        except InputError as e:
            raise _error(e)
        res = load_results(self.results_root, protocol)
        where = display_path(self.results_root)
        if res.empty:
            msg = (f"**No results shipped yet.** Nothing was found in `{where}/` (expected "
                   "`results.json` and/or run directories with `evaluation.json` and "
                   "`metrics.jsonl`, written by `python -m cmrl eval --json RUN/evaluation.json` "
                   "and `python -m cmrl report`).")
            if res.problems:
                msg += "\n\nProblems: " + "; ".join(res.problems)
            empty = message_figure("no shipped results", 300)
            return msg, empty, empty, []
        tasks = res.tasks()
        lines = [f"Results from `{where}/`" + (f" ({len(res.success)} agents)" if res.success
                                              else "") + ". Success: an evaluation episode with "
                 "`info['success']` at any step, after adaptation episodes; error bars: std over "
                 "seeds (n = seeds)."]
        if res.commands:
            lines.append("**Commands that produced these numbers:**")
            lines += [f"- {who}: `{cmd}`" for who, cmd in res.commands]
        lines += [f"> {n}" for n in res.notes]
        if res.problems:
            lines.append("Problems: " + "; ".join(res.problems))
        bars = (success_bars_figure({a: v for a, v in res.success.items()}, tasks, res.held_out,
                                    "success rate per task per agent (seed paper, Figure 4)")
                if res.success else message_figure("no evaluation files shipped", 300))
        curves = (return_curves_figure(res.curves, [t for t in tasks if any(
            t in run["returns"] for runs in res.curves.values() for run in runs)], res.held_out,
            res.x_label) if any(res.curves.values()) else message_figure(
            "no training curves (metrics.jsonl) shipped", 300))
        return "\n".join(lines), bars, curves, table_rows(res)

    # -- layout ---------------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        found = self.checkpoints()
        default = self.default_checkpoint(found)
        with gr.Blocks(title="CMRL: compositional meta-RL", delete_cache=(1800, 3600)) as demo:
            gr.Markdown(
                "# CMRL: type a goal, watch the arm adapt, see the routing\n"
                "Compositional meta-RL on Meta-World: a PEARL context encoder, conditioned also on "
                "the goal text, infers a context *z* that drives the routing between the modules "
                "of a soft-modular SAC policy.")
            if not found:
                gr.Markdown("> **No checkpoint found** in `checkpoints/` or `runs/`. Train one in "
                            "the **Train** tab (or `python -m cmrl train --agent cmrl --steps 20000 "
                            "--run-dir runs/demo`), then press ↻ next to the checkpoint list.")
            known_state = gr.State({"ckpts": found})
            with gr.Tabs():
                with gr.Tab("Adapt", id="adapt"):
                    adapt = self._adapt_tab(found, default)
                with gr.Tab("Compare goals", id="compare"):
                    compare = self._compare_tab(found, default)
                with gr.Tab("Routing inspector", id="inspect"):
                    inspect_ck = self._inspect_tab(found, default)
                with gr.Tab("Train", id="train"):
                    train = self._train_tab()
                with gr.Tab("Results", id="results"):
                    results = self._results_tab()
            ck_dropdowns = [adapt, compare, inspect_ck]
            timer = gr.Timer(2.0)
            timer.tick(self.train_refresh, [train["run"], train["shown"], known_state],
                       [train["table"], train["run"], train["curves"], train["status"],
                        train["log"], *ck_dropdowns, train["progress"], train["shown"],
                        known_state],
                       show_progress="hidden", concurrency_limit=None, api_name="train_refresh")
            demo.load(self.results, [results["protocol"]],
                      [results["md"], results["bars"], results["curves"], results["table"]],
                      api_visibility="private")
        return demo

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

    def _adapt_tab(self, found, default):
        ck = self._ckpt_row(found, default)
        with gr.Row():
            scene = DropdownInput(SCENES, value="window-close-v3", allow_custom_value=True,
                                label="scene (ML4 tasks first; window-close is held out)")
            variation = NumberInput(0, precision=0, label=f"goal variation (0-{NUM_VARIATIONS - 1})")
            camera = DropdownInput(list(CAMERAS), value="corner", label="camera")
            episodes = SliderInput(0, MAX_EPISODES, value=3, step=1, label="adaptation episodes")
        goal = gr.Textbox("close the window", label="goal description (free text)", max_lines=2)
        gr.Examples([[g] for g in GOAL_EXAMPLES], inputs=goal, label="example goals")
        with gr.Accordion("more settings", open=False):
            with gr.Row():
                eval_eps = SliderInput(0, 5, value=1, step=1,
                                     label="evaluation episodes (posterior mean, deterministic)")
                horizon = SliderInput(10, 500, value=self.checkpoint_horizon(default) or 200,
                                      step=10, label="episode length (steps)",
                                      info="default: the checkpoint's training horizon")
                size = DropdownInput(list(FRAME_SIZES), value=224, label="frame size (px)")
        with gr.Row():
            run = gr.Button("Run", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        status = gr.Markdown("Press **Run** to roll the agent out.")
        with gr.Row():
            frame = gr.Image(label="rollout", format="jpeg", height=360, elem_id="frame",
                             interactive=False, buttons=[])
            with gr.Column():
                routing = gr.Plot(label="routing (updated every 5 env steps)")
                posterior = gr.Plot(label="context posterior")
        with gr.Row():
            video = gr.Video(label="last finished episode (mp4)", interactive=False, loop=True,
                             height=320)
            gallery = gr.Gallery(label="all episodes (click one to play it)", columns=4,
                                 height=320, interactive=False, object_fit="contain")
        table = gr.Dataframe(headers=["episode", "phase", "success", "return", "steps"],
                             label="per-episode summary", interactive=False)
        ev = run.click(self.adapt, [ck, scene, goal, variation, camera, episodes, eval_eps, horizon,
                                    size],
                       [frame, routing, posterior, status, video, gallery, table],
                       concurrency_limit=ROLLOUT_CONCURRENCY, concurrency_id="rollout",
                       api_name="adapt")
        cancel.click(self.cancel, None, None, cancels=[ev], api_name="cancel")
        ck.change(self.horizon_update, ck, horizon, api_name="checkpoint_horizon",
                  show_progress="hidden")
        scene.change(lambda s, g: canonical_goal_text(s) if (not g or g in CANONICAL_TEXTS)
                     and s in SCENES else gr.skip(), [scene, goal], goal, api_visibility="private",
                     show_progress="hidden")
        return ck

    def _compare_tab(self, found, default):
        gr.Markdown("The same scene and goal variation, two goal descriptions side by side: see "
                    "how the words alone change the routing and the behaviour.")
        ck = self._ckpt_row(found, default)
        with gr.Row():
            scene = DropdownInput(SCENES, value="window-close-v3", allow_custom_value=True,
                                label="scene")
            variation = NumberInput(0, precision=0, label=f"goal variation (0-{NUM_VARIATIONS - 1})")
            camera = DropdownInput(list(CAMERAS), value="corner", label="camera")
            episodes = SliderInput(1, 5, value=2, step=1, label="adaptation episodes")
            horizon = SliderInput(10, 500, value=self.checkpoint_horizon(default) or 200, step=10,
                                  label="episode length")
        ck.change(self.horizon_update, ck, horizon, api_visibility="private",
                  show_progress="hidden")
        with gr.Row():
            goal_a = gr.Textbox("open the window", label="goal A")
            goal_b = gr.Textbox("close the window", label="goal B")
        with gr.Row():
            run = gr.Button("Compare", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        outcome = gr.Markdown()
        columns = []
        with gr.Row():
            for side in ("A", "B"):
                with gr.Column():
                    columns.append((gr.Image(label=f"goal {side}", format="jpeg", height=300,
                                             interactive=False, buttons=[], elem_classes="cmp-frame"),
                                    gr.Markdown(elem_classes="small-md"),
                                    gr.Plot(label=f"routing, goal {side}")))
        (frame_a, status_a, routing_a), (frame_b, status_b, routing_b) = columns
        ev = run.click(self.compare, [ck, scene, goal_a, goal_b, variation, camera, episodes,
                                      horizon],
                       [frame_a, routing_a, status_a, frame_b, routing_b, status_b, outcome],
                       concurrency_limit=ROLLOUT_CONCURRENCY, concurrency_id="rollout",
                       api_name="compare")
        cancel.click(self.cancel_compare, None, None, cancels=[ev], api_visibility="private")
        return ck

    def _inspect_tab(self, found, default):
        gr.Markdown("Mean actor routing per task over a few episodes, and how similar the tasks' "
                    "routing is: which modules the tasks share (the compositional story).")
        ck = self._ckpt_row(found, default)
        with gr.Row():
            tasks = DropdownInput(SCENES, value=ML4_TASKS, multiselect=True, label="tasks")
            metric = RadioInput(list(METRICS), value="centered-cosine", label="similarity",
                              info="centered-cosine: cosine of the deviations from uniform "
                                   "routing (a plain cosine of near-uniform routings is ~1)")
        with gr.Row():
            episodes = SliderInput(1, 5, value=2, step=1, label="adaptation episodes per variation")
            variations = SliderInput(1, 5, value=1, step=1, label="goal variations per task")
            horizon = SliderInput(10, 500, value=self.checkpoint_horizon(default) or 100, step=10,
                                  label="episode length")
        ck.change(self.horizon_update, ck, horizon, api_visibility="private",
                  show_progress="hidden")
        with gr.Row():
            run = gr.Button("Inspect", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        status = gr.Markdown()
        sim = gr.Plot(label="routing similarity")
        mean = gr.Plot(label="mean routing per task")
        table = gr.Dataframe(headers=["task", "goal text", "adaptation steps", "episodes",
                                      "success, text only", "success, adapted",
                                      "routing nearest (text only)", "routing nearest (adapted)",
                                      "z nearest (text only)", "z nearest (adapted)"],
                             label="where each task lands", interactive=False)
        ev = run.click(self.inspect, [ck, tasks, episodes, variations, horizon, metric],
                       [mean, sim, table, status], concurrency_limit=ROLLOUT_CONCURRENCY,
                       concurrency_id="rollout", api_name="inspect")
        cancel.click(self.cancel_inspect, None, None, cancels=[ev], api_visibility="private")
        return ck

    def _train_tab(self):
        hosted = ""
        if self.hosted:
            hosted = ("\n\n> **Hosted demo page: training is switched off here** (CMRL_HOSTED=1). "
                      "Run the app locally to train.")
        else:
            hosted = (f"\n\n> Each run is capped at {self.jobs.max_steps:,} steps per training "
                      f"phase and {self.jobs.max_seconds / 3600:g} h of wall time on this page.")
        gr.Markdown(f"Pick a **recipe** (from `cmrl.recipes`: data made on demand, then offline "
                    f"and/or online training) and launch it as a separate process (it keeps running "
                    f"if you reload the page); runs go to `{display_path(self.jobs.runs_dir)}/<name>`."
                    f" One run at a time: further launches wait in a queue.  \n**Device here:** "
                    f"{device_summary()}{hosted}")
        with gr.Row():
            recipe = RadioInput(recipe_choices(), value="quick", label="recipe", scale=3)
            estimate = gr.Button("estimate", scale=0, min_width=90)
        about = gr.Markdown(recipe_summary("quick"), elem_classes="small-md")
        est = gr.Markdown("Press **estimate** for the time on this machine.",
                          elem_classes="small-md", elem_id="train-estimate")
        with gr.Row():
            bench = DropdownInput(["ml4", "ml10", "ml45", "ml1:window-close-v3"], value="ml4",
                                  allow_custom_value=True, label="benchmark (or ml1:<env>)")
            seed = NumberInput(0, precision=0, label="seed")
            device = RadioInput(list(DEVICES), value="auto", label="device")
            name = gr.Textbox("", label="run name (optional)")
        with gr.Accordion("custom run: python -m cmrl train with the trainer's flags (recipe "
                          "custom; empty: the trainer's defaults)", open=False) as custom:
            with gr.Row():
                agent = DropdownInput(list(AGENTS), value="cmrl", label="agent")
                steps = NumberInput(20000, precision=0,
                                    label="steps (env steps; gradient steps offline)")
                prior = RadioInput(list(PRIOR_DATA), value="none",
                                   label="prior data (scripted expert)")
                offline = gr.Textbox("", label="offline dataset dir (optional; `python -m cmrl data`)")
            with gr.Row():
                horizon = NumberInput(None, precision=0, label="horizon")
                envs = NumberInput(None, precision=0, label="envs per task")
                warmup = NumberInput(None, precision=0, label="warm-up steps")
                upd = NumberInput(None, label="updates per env step")
                eval_every = NumberInput(None, precision=0, label="evaluate every")
                ckpt_every = NumberInput(None, precision=0, label="checkpoint every")
            launch_custom = gr.Button("Launch custom run", variant="primary",
                                      interactive=not self.hosted)
        with gr.Row():
            launch = gr.Button("Launch", variant="primary", interactive=not self.hosted)
            # Custom values: a run launched after this page was built (or by another client)
            # can be stopped and resumed by name; the handlers check the name.
            run = DropdownInput(self.run_choices(), value=None, label="run", scale=3,
                                allow_custom_value=True)
            stop = gr.Button("Stop", variant="stop")
            cancel = gr.Button("Cancel (queued: leave the queue)")
            resume = gr.Button("Resume (custom: steps = new total)", interactive=not self.hosted)
        status = gr.Markdown()
        progress = gr.HTML(progress_html(None), elem_id="train-progress-panel")
        table = gr.Dataframe(headers=["run", "state", "recipe / agent", "benchmark", "phase",
                                      "progress", "ETA", "device", "started", "pid"],
                             label="runs launched from the app", value=self.jobs_table(),
                             interactive=False)
        curves = gr.Plot(label="training curves (metrics.jsonl, refreshed every 2 s): success on "
                               "fresh variations per task, losses, alpha", elem_id="train-curves")
        logbox = gr.Textbox(label="log (last lines)", lines=8, max_lines=12, interactive=False)
        shown = gr.State(None)
        for control in (recipe, bench, device):
            control.change(self.train_recipe_changed, [recipe, bench, device],
                           [about, est, custom, launch], api_visibility="private",
                           show_progress="hidden")
        estimate.click(self.train_estimate, [recipe, bench, device], est, api_name="train_estimate",
                       concurrency_limit=1)
        launch.click(self.train_recipe, [recipe, bench, seed, device, name], [status, run],
                     api_name="train_recipe", concurrency_limit=1)
        launch_custom.click(self.train_launch, [agent, bench, steps, seed, prior, offline, device,
                                                name, horizon, envs, warmup, upd, eval_every,
                                                ckpt_every],
                            [status, run], api_name="train_launch", concurrency_limit=1)
        stop.click(self.train_stop, run, status, api_name="train_stop")
        cancel.click(self.train_cancel, run, status, api_name="train_cancel")
        resume.click(self.train_resume, [run, steps, device], status, api_name="train_resume",
                     concurrency_limit=1)
        return {"run": run, "table": table, "curves": curves, "status": status, "log": logbox,
                "shown": shown, "progress": progress}

    def _results_tab(self):
        gr.Markdown(f"From the evaluation files shipped in `{display_path(self.results_root)}/` "
                    "(nothing is recomputed here).")
        with gr.Row():
            protocol = RadioInput(["cmrl", "metaworld"], value="cmrl",
                                label="evaluation protocol")
            refresh = gr.Button("↻ reload", scale=0)
        md = gr.Markdown()
        bars = gr.Plot(label="success per task per agent")
        curves = gr.Plot(label="return over training")
        table = gr.Dataframe(headers=["agent", "task", "split", "zero-shot (text only)",
                                      "success (adapted)", "adaptation gain", "return", "n"],
                             label="table", interactive=False)
        outs = [md, bars, curves, table]
        refresh.click(self.results, protocol, outs, api_name="results")
        protocol.change(self.results, protocol, outs, api_visibility="private")
        return {"protocol": protocol, "md": md, "bars": bars, "curves": curves, "table": table}


def _inspect_row(task: str, c, nearest: dict) -> list:
    """One row of the inspector's table: successes, and the nearest meta-train task by routing and
    by z from the text alone and after adaptation."""
    def near(key):
        return nearest[key]["nearest"] if key in nearest else "-"

    return [task, c.goal_text, c.adaptation_steps, c.adaptation_episodes,
            f"{c.success_text:.2f}", f"{c.success_adapted:.2f}", near("routing_text"),
            near("routing_adapted"), near("z_text"), near("z_adapted")]


def _session(request, tab: str, new: bool = True) -> str:
    """The key of one tab's rollouts in one page (or API client) session."""
    session = getattr(request, "session_hash", None)
    if not session:
        session = uuid.uuid4().hex if new else ""
    return f"{session}:{tab}"


def build(**kwargs) -> gr.Blocks:
    """The whole page (see `App` for the keyword arguments: checkpoint roots, runs dir, results
    root, a default checkpoint, hosted mode, a step cap)."""
    return App(**kwargs).build()


def configure_runtime() -> None:
    """One torch thread per rollout: several users' rollouts share the cores. Few malloc arenas
    (`_limit_malloc_arenas`). The page's own log (refused inputs, one line each; failed rollouts
    with their traceback) goes to stderr."""
    import torch

    torch.set_num_threads(int(os.environ.get("CMRL_APP_TORCH_THREADS", "1")))
    _limit_malloc_arenas(int(os.environ.get("MALLOC_ARENA_MAX", "2")))
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _limit_malloc_arenas(n: int) -> None:
    """glibc gives new threads malloc arenas of their own (up to 8 per core), and the memory freed
    in each stays resident. Rollout threads come and go: measured here, 60 rollouts 4 at a time
    left the server at 2.7 GB with the default and 1.5 GB with 2 arenas (1.2 GB with
    MALLOC_ARENA_MAX=2 set before start, as scripts/run_app.sh does). No-op off glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, n)
    except (OSError, AttributeError):
        pass


def launch(demo: gr.Blocks | None = None, **kwargs):
    """Queue and session settings for a public page, then serve (GRADIO_SERVER_NAME / _PORT are
    honoured by gradio itself; 127.0.0.1:7860 by default)."""
    configure_runtime()
    demo = demo or build()
    demo.queue(default_concurrency_limit=ROLLOUT_CONCURRENCY, max_size=QUEUE_SIZE)
    kwargs.setdefault("state_session_capacity", STATE_SESSIONS)
    return demo.launch(css=CSS, **kwargs)
