"""Training runs launched from the app, a recipe (`python -m cmrl recipe ...`) or a custom run
(`python -m cmrl train --config FILE`: the RunConfig checked here), each run by a backend
(`job_backends.py`): a process here, or with CMRL_RAY_ADDRESS a job on a Ray cluster.

A job's record is `RUNS/<name>/app_job.json`, beside what the run writes: its spec and one entry
per launch or resume (command, pid or Ray job id, when it was queued, began and ended, a stop
request, exit code and message). The job list is rebuilt from these files on every refresh (it
survives reloads and app restarts). On a cluster RUNS must be storage every node sees at the same
path. Here one run at a time (`MAX_RUNNING`): a launch made while one runs waits, unstarted, in this
page's queue; a cluster queues by itself. A watcher thread, awake while anything runs or waits,
records ends, stops a run at the wall-time cap, kills a stopped run that lingers and starts the
next queued one.

Caps on every launch: DEFAULT_MAX_STEPS steps per phase (CMRL_MAX_TRAIN_STEPS), DEFAULT_MAX_SECONDS
of running time (CMRL_MAX_TRAIN_SECONDS), fields within `LIMITS`, `MAX_QUEUED` waiting, datasets
only from the allowed roots (`roots.py`); a hosted page (CMRL_HOSTED=1) launches nothing. Recipes
at smoke size: `recipe_smoke=` or CMRL_RECIPE_SMOKE="steps,data_episodes"; their data cache:
`data_root=` or CMRL_RECIPE_DATA_ROOT.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmrl.runs.checkpoint import atomic_write_json, has_resumable_state
from cmrl.config import (AGENT_KINDS, DEVICES, PRIOR_DATA,  # noqa: F401 (the library's choice lists)
                         BenchmarkConfig, RunConfig, check_bounds)
from cmrl.envs.tasks import resolve_benchmark
from cmrl.errors import user_errors, user_message
from cmrl.runs.logger import read_metrics
from cmrl.runs.run_status import read_status

from .common import ROOT, InputError, display_path, env_flag
from .job_backends import (LOG_FILE, JobError, LocalProcesses, RayJobs,  # noqa: F401 (re-exported)
                           log_tail, pid_alive)
from .roots import Roots

JOB_FILE = "app_job.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
AGENTS = AGENT_KINDS
LAUNCH_CONFIG = "launch_config.json"
"""The validated RunConfig of a custom launch, in its run directory (`train --config`)."""
CUSTOM = "custom"
"""The recipe choice that launches `python -m cmrl train` with the trainer's flags."""
MAX_RUNNING = 1
MAX_QUEUED = 8
DEFAULT_MAX_STEPS = 100_000
DEFAULT_MAX_SECONDS = 4 * 3600
LIMITS = {"horizon": (10, 500), "envs_per_task": (1, 16), "warmup_steps": (0, None),
          "eval_every": (0, None), "checkpoint_every": (1, None), "seed": (0, 2**31 - 1)}
"""Ranges of the whole-number fields of a launch; None: the step cap."""
UPDATES_PER_STEP = (0.0, 16.0)
"""updates_per_step must be above the first and at most the second."""
WATCH_S = 1.0
"""How often the watcher thread looks at the jobs that run or wait."""


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


@dataclass
class TrainSpec:
    agent: str = "cmrl"
    benchmark: str = "ml4"
    steps: int = 20000
    seed: int = 0
    prior_data: str = "none"
    offline: str | None = None
    device: str = "auto"
    name: str | None = None
    horizon: int | None = None
    envs_per_task: int | None = None
    warmup_steps: int | None = None
    updates_per_step: float | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    extra: list[str] = field(default_factory=list)


@dataclass
class RecipeSpec:
    """A launch of a library recipe (`cmrl.experiments.recipes.RECIPES`)."""

    recipe: str = "quick"
    benchmark: str = "ml4"
    seed: int = 0
    device: str = "auto"
    name: str | None = None


def _smoke_from_env() -> tuple[int, int] | None:
    """CMRL_RECIPE_SMOKE="steps,data_episodes" (both positive whole numbers), else None."""
    try:
        steps, episodes = (int(x) for x in os.environ.get("CMRL_RECIPE_SMOKE", "").split(","))
    except ValueError:
        return None
    return (steps, episodes) if steps > 0 and episodes > 0 else None


def _env_cap(name: str, default: int) -> int:
    """A positive whole number from the environment, else `default`."""
    try:
        value = int(os.environ.get(name, "").strip())
    except ValueError:
        return default
    return value if value > 0 else default


@dataclass
class JobStatus:
    name: str
    run_dir: Path
    state: str  # queued | running | stopping | finished | stopped | failed | interrupted | cancelled
    pid: int | None
    agent: str
    benchmark: str
    target_steps: int | None
    step: int
    device: str
    started: float | None
    command: str
    exit_code: int | None = None
    message: str = ""
    recipe: str | None = None
    """The recipe's name, None for a custom run."""
    phase: str | None = None
    phases: list[str] = field(default_factory=list)
    unit: str = "steps"
    rate: float | None = None
    eta_s: float | None = None
    precision: str = ""
    queue_position: int | None = None
    """Place in this page's queue; None for a run the cluster holds (pending there)."""
    where: str = ""
    """Where the last launch ran: `pid N` here, or `Ray job ID` on the cluster."""

    @property
    def alive(self) -> bool:
        return self.state in ("running", "stopping")

    @property
    def stoppable(self) -> bool:
        """Running, or queued (a stop takes it out of the queue, this page's or the cluster's)."""
        return self.alive or self.state == "queued"

    @property
    def what(self) -> str:
        return f"recipe {self.recipe}" if self.recipe else self.agent

    @property
    def progress(self) -> str:
        if self.state == "queued":
            return f"queued ({f'position {self.queue_position}' if self.queue_position else 'on the cluster'})"
        if self.target_steps:
            return f"{self.step:,}/{self.target_steps:,} ({100 * self.step / self.target_steps:.0f}%)"
        return f"{self.step:,}"

    @property
    def fraction(self) -> float | None:
        return max(0.0, min(1.0, self.step / self.target_steps)) if self.target_steps else None


def _sentence(message: str) -> str:
    """A library message as the page writes its own: capitalised (unless it opens with a config
    field's name, e.g. `train.prior_data must be ...`)."""
    return message if re.match(r"\w+\.\w+", message) else message[:1].upper() + message[1:]


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class JobManager:
    def __init__(self, runs_dir: Path | None = None, hosted: bool | None = None,
                 max_steps: int | None = None, python: str | None = None,
                 max_seconds: float | None = None, roots: Roots | None = None,
                 recipe_smoke: tuple[int, int] | None = None, data_root: Path | None = None,
                 ray_address: str | None = None, ray_storage: Path | None = None):
        """`ray_address` (else CMRL_RAY_ADDRESS): the Ray dashboard to launch on; `ray_storage`
        (else CMRL_RAY_STORAGE): the shared folder runs and recipe data default to. A cluster job
        runs CMRL_RAY_PYTHON (default `python`) and asks for CMRL_RAY_CPUS CPUs (default 1)."""
        self.hosted = env_flag("CMRL_HOSTED") if hosted is None else hosted
        self.ray_address = None if self.hosted else (
            ray_address or os.environ.get("CMRL_RAY_ADDRESS", "").strip() or None)
        storage = ray_storage or os.environ.get("CMRL_RAY_STORAGE", "").strip()
        storage = Path(storage).resolve() if storage and self.ray_address else None
        self.runs_dir = Path(runs_dir) if runs_dir else (
            storage / "runs" if storage else ROOT / "runs" / "app")
        self.recipe_smoke = recipe_smoke or _smoke_from_env()
        data = data_root or os.environ.get("CMRL_RECIPE_DATA_ROOT", "").strip() or (
            storage and storage / "data")
        self.data_root = Path(data) if data else None
        self.max_steps = max_steps or _env_cap("CMRL_MAX_TRAIN_STEPS", DEFAULT_MAX_STEPS)
        self.max_seconds = max_seconds or _env_cap("CMRL_MAX_TRAIN_SECONDS", DEFAULT_MAX_SECONDS)
        self.roots = roots or Roots()
        self.python = python or sys.executable
        self.local = LocalProcesses()
        self._lock = threading.RLock()  # launches, resumes and the queue, one at a time
        self._file_lock = threading.RLock()
        self._watcher: threading.Thread | None = None

    @functools.cached_property
    def backend(self) -> LocalProcesses | RayJobs:
        """Where launches go: the Ray cluster (connected on first use) if the page has an address."""
        return RayJobs(self.ray_address, os.environ.get("CMRL_RAY_PYTHON", "python"),
                       _env_cap("CMRL_RAY_CPUS", 1)) if self.ray_address else self.local

    def _backend_of(self, launch: dict) -> LocalProcesses | RayJobs:
        if launch.get("ray_job") and not self.ray_address:
            raise JobError(f"{launch['ray_job']} ran on the Ray cluster at {launch.get('address')}"
                           "; this page has no CMRL_RAY_ADDRESS to ask it.")
        return self.backend if launch.get("ray_job") else self.local

    # -- listing ------------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise JobError(f"Invalid run name {str(name)[:70]!r}: use letters, digits, '.', '_' and "
                           "'-' (at most 64 characters, no slashes).")
        return self.runs_dir / name

    def _jobs(self) -> list[tuple[str, dict, float]]:
        """(name, job record, file time) of every app-launched run."""
        return [(p.parent.name, _read_json(p), p.stat().st_mtime)
                for p in self.runs_dir.glob(f"*/{JOB_FILE}")]

    def names(self) -> list[str]:
        """Newest first."""
        first = {n: (j.get("launches") or [{}])[0].get("started") or j.get("created") or t
                 for n, j, t in self._jobs()}
        return sorted(first, key=first.get, reverse=True)

    def queued(self) -> list[str]:
        """The jobs waiting in this page's queue (a last launch not started), first in line first."""
        lasts = {n: (j.get("launches") or [{}])[-1] for n, j, _ in self._jobs()}
        return sorted((n for n, last in lasts.items() if LocalProcesses.waiting(last)),
                      key=lambda n: lasts[n]["queued_since"])

    @contextlib.contextmanager
    def _edit(self, name: str):
        """The job record of `name` to change in place, written back (atomically) after."""
        path = self.runs_dir / name / JOB_FILE
        with self._file_lock:
            job = _read_json(path)
            yield job
            if job:
                atomic_write_json(path, job)

    def _poll(self, name: str, run: Path, last: dict) -> tuple[str, int | None, str]:
        """Where the last launch stands (see `job_backends`); when it began running (the wall-time
        cap counts from then) and how it ended are recorded once."""
        if last.get("ended"):
            return "ended", last.get("exit_code"), last.get("message", "")
        try:
            where, code, message = self._backend_of(last).poll(run, last)
        except JobError as e:
            return "lost", None, str(e)
        now, ended = time.time(), where in ("ended", "stopped")
        if ended or (where == "running" and not last.get("running_since")):
            with self._edit(name) as job:
                rec = job["launches"][-1]
                if rec.get("started") == last.get("started"):  # not a newer launch meanwhile
                    rec.update(dict(exit_code=code, ended=now, message=message) if ended
                               else dict(running_since=now))
                    if where == "stopped":  # on the cluster, not from this page
                        rec.setdefault("stop_requested", now)
                    last.update(rec)
        return where, code, message

    def status(self, name: str) -> JobStatus:
        run = self.run_dir(name)
        job = _read_json(run / JOB_FILE)
        if not job:
            raise JobError(f"No app-launched run called {name!r} in {display_path(self.runs_dir)}.")
        spec = job.get("spec") or {}
        recipe = spec.get("recipe")
        agent, benchmark = spec.get("agent", "cmrl" if recipe else "?"), spec.get("benchmark", "?")
        last = (job.get("launches") or [{"ended": job.get("created"), "stop_requested": True}])[-1]
        where, exit_code, message = self._poll(name, run, last)
        rows = read_metrics(run, max_rows=3)
        step = int(rows[-1].get("step", 0)) if rows else 0
        info = _read_json(run / "config.json")
        cfg_steps = (info.get("config") or {}).get("train", {}).get("steps")
        target = int(last.get("steps") or spec.get("steps") or cfg_steps or 0) or None
        run_status = (read_status(run) if recipe else None) or {}
        asked = spec.get("device", "auto")
        device = info.get("device") or run_status.get("device") or (
            asked if asked != "auto" else "auto (the cluster's node)" if last.get("ray_job")
            else f"auto → {'cuda' if cuda_available() else 'cpu'}")
        if run_status:
            step = int(run_status.get("step") or 0)
            target = int(run_status.get("total") or 0) or None
        if last.get("time_limit"):
            message = (f"stopped at this page's time limit of {self.max_seconds / 3600:g} h "
                       "(CMRL_MAX_TRAIN_SECONDS); its last checkpoint is kept")
        if where in ("pending", "running"):
            self._watch()
            state = "stopping" if last.get("stop_requested") else {"pending": "queued"}.get(
                where, where)
        elif last.get("stop_requested"):  # by Stop or Cancel (cancelled: before it ever ran)
            state = "stopped" if last.get("pid") or last.get("ray_job") else "cancelled"
        elif exit_code == 0 or (exit_code is None and (
                run_status.get("state") == "finished" if recipe else (target and step >= target))):
            state = "finished"
        elif exit_code is not None:
            state = "failed"
            message = message or run_status.get("message") or log_tail(run, 3)
        else:
            state = "interrupted"
        waiting = self.queued() if state == "queued" and not last.get("ray_job") else []
        return JobStatus(name, run, state, last.get("pid"), agent, benchmark, target, step, device,
                         (job.get("launches") or [{}])[0].get("started"), last.get("command", ""),
                         exit_code, message, recipe, run_status.get("phase"),
                         list(run_status.get("phases") or []), run_status.get("unit") or "steps",
                         run_status.get("rate"), run_status.get("eta_s"),
                         run_status.get("precision") or "", waiting.index(name) + 1
                         if name in waiting else None,
                         f"Ray job {last['ray_job']}" if last.get("ray_job") else
                         f"pid {last['pid']}" if last.get("pid") else "not started")

    def list(self) -> list[JobStatus]:
        out = []
        for n in self.names():
            with contextlib.suppress(JobError):  # removed meanwhile
                out.append(self.status(n))
        return out

    def running(self) -> list[JobStatus]:
        return [j for j in self.list() if j.alive]

    def log(self, name: str, lines: int = 25) -> str:
        """The last lines of the log of `name`'s last launch: train.log, or Ray's job log."""
        run = self.run_dir(name)
        last = (_read_json(run / JOB_FILE).get("launches") or [{}])[-1]
        try:
            return self._backend_of(last).log(run, last, lines)
        except JobError as e:
            return str(e)

    # -- the queue and the watcher --------------------------------------------------------------------
    def _check_can_launch(self) -> None:
        """Hosted pages launch nothing; a full queue takes nothing more."""
        if self.hosted:
            raise JobError("Training is switched off on this hosted demo page (CMRL_HOSTED=1), so "
                           "that it cannot be used to burn compute. Run the app locally "
                           "(`bash scripts/run_app.sh`) to train, or use `python -m cmrl train`.")
        if sum(j.state == "queued" for j in self.list()) >= MAX_QUEUED:
            raise JobError(f"The queue is full: {MAX_QUEUED} runs are waiting for their turn. "
                           "Cancel one of them or wait.")

    def _launch(self, name: str, run: Path, argv: list[str], job: dict, steps: int | None,
                device: str) -> None:
        """Records a launch and starts it now if a cluster takes it or nothing runs (or waits)
        here; else it waits in this page's queue (`pump` starts it; the caller's status says where
        it waits and wakes the watcher)."""
        shown = ["python"] + [display_path(run) if a == str(run) else a for a in argv[1:]]
        record = dict(argv=argv, command=shlex.join(shown), steps=steps, device=device,
                      max_seconds=self.max_seconds, exit_code=None, queued_since=time.time())
        wait = not self.backend.queues and (self.running() or self.queued())
        if not wait:
            record.update(self.backend.start(run, record), started=time.time())
        with self._edit(name) as stored:
            stored.update(stored or job)
            stored.setdefault("launches", []).append(record)

    def pump(self) -> str | None:
        """Starts the first job of this page's queue if nothing runs here; returns its name (None
        if none started). Called by the watcher and on every page refresh."""
        with self._lock:
            waiting = [] if self.hosted else self.queued()
            if not waiting or len(self.running()) >= MAX_RUNNING:
                return None
            with self._edit(waiting[0]) as job:
                last, run = job["launches"][-1], self.run_dir(waiting[0])
                try:
                    last.update(self.local.start(run, last), started=time.time())
                except (JobError, KeyError, TypeError) as e:
                    last.update(ended=time.time(), message=f"could not start: {e}"[:500])
            return waiting[0]

    def _watch(self) -> None:
        """Wakes the watcher thread (`_watching`) unless it is awake."""
        with self._file_lock:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watching, daemon=True,
                                                 name="job-watcher")
                self._watcher.start()

    def _watching(self) -> None:
        """While anything runs or waits: records ends (`status`), stops a run at the wall-time cap,
        kills a stopped local run still there after its grace time, starts the next queued run."""
        busy = True
        while busy:
            time.sleep(WATCH_S)
            busy = False
            for name in self.names():
                try:
                    st = self.status(name)
                    busy |= st.stoppable
                    last = (_read_json(st.run_dir / JOB_FILE).get("launches") or [{}])[-1]
                    now = time.time()
                    if st.state == "running" and now > last.get("running_since", now) + last.get(
                            "max_seconds", now):
                        self.stop(name, time_limit=True)
                    elif st.alive and now > last.get("stop_requested", now) + last.get("grace_s", 0):
                        self._backend_of(last).stop(last, force=True)
                except Exception:  # noqa: BLE001 (a torn file, a cluster hiccup: next round)
                    busy = True
            with contextlib.suppress(Exception):  # noqa: BLE001 (tried again next round)
                busy |= bool(self.pump())

    def stop(self, name: str, grace_s: float = 10.0, time_limit: bool = False) -> JobStatus:
        """Takes a job out of the queue (this page's or the cluster's) or asks a running one to stop
        (SIGINT here, Ray's stop on a cluster): it exits keeping its last checkpoint; the watcher
        kills a local run still there after `grace_s`. `time_limit`: by the page's wall-time cap."""
        with self._lock:  # not while `pump` starts it
            st = self.status(name)
            if not st.stoppable:
                raise JobError(f"{name} is neither queued nor running ({st.state}): nothing to "
                               "cancel or stop.")
            with self._edit(name) as job:
                last = job["launches"][-1]
                last.update(stop_requested=time.time(), grace_s=grace_s, time_limit=time_limit)
                if LocalProcesses.waiting(last):  # never started: nothing to signal
                    last["ended"] = last["stop_requested"]
            if not last.get("ended"):
                self._backend_of(last).stop(last)
            return self.status(name)

    # -- checking a launch ------------------------------------------------------------------------------
    def _cap(self, steps) -> tuple[int, str]:
        """`steps` if a whole number >= 1 (else JobError), capped at this page's cap; a note."""
        if not _whole(steps) or steps < 1:
            raise JobError(f"Steps must be a whole number >= 1, got {str(steps)[:30]}.")
        if steps > self.max_steps:
            return self.max_steps, (f"steps capped at {self.max_steps:,} on this page "
                                    "(CMRL_MAX_TRAIN_STEPS)")
        return steps, ""

    def limits(self, name: str) -> tuple[int, int]:
        """The range of a whole-number field of a launch (`LIMITS`, None there: the step cap)."""
        lo, hi = LIMITS[name]
        return lo, self.max_steps if hi is None else hi

    def run_config(self, spec: TrainSpec) -> RunConfig:
        """The `RunConfig` a custom launch trains with: the trainer's defaults with the form's
        fields set, checked by the library itself (types, choices, ranges, the benchmark); its
        ConfigError & co. become one JobError line."""
        fields = {"train.agent": spec.agent, "benchmark.name": spec.benchmark,
                  "train.steps": spec.steps, "train.seed": spec.seed,
                  "train.prior_data": spec.prior_data, "train.device": spec.device}
        optional = {"benchmark.horizon": spec.horizon, "train.envs_per_task": spec.envs_per_task,
                    "train.warmup_steps": spec.warmup_steps,
                    "train.updates_per_step": spec.updates_per_step,
                    "train.eval_every": spec.eval_every,
                    "train.checkpoint_every": spec.checkpoint_every}
        fields.update({k: v for k, v in optional.items() if v is not None})
        if spec.offline:
            fields.update({"train.offline": str(spec.offline), "train.mode": "offline"})
        try:
            cfg = RunConfig().updated(fields)
            check_bounds(cfg)
            resolve_benchmark(cfg.benchmark)
        except user_errors() as e:
            raise JobError(_sentence(user_message(e))) from None
        return cfg

    def build_argv(self, spec: TrainSpec, run_dir: Path) -> list[str]:
        """`python -m cmrl train --config FILE`: the validated RunConfig written into the run
        directory (LAUNCH_CONFIG), so the process trains exactly what was checked here."""
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LAUNCH_CONFIG
        atomic_write_json(path, {"config": self.run_config(spec).to_dict()})
        argv = [self.python, "-m", "cmrl", "train", "--run-dir", str(run_dir), "--config",
                str(path), "--no-progress"]
        return argv + list(spec.extra)

    def validate(self, spec: TrainSpec) -> tuple[TrainSpec, list[str]]:
        """This page's rules (the step cap, the ranges of `LIMITS`, datasets only from the allowed
        roots, no cuda where there is none), then the library's own check of the RunConfig the
        launch makes (`run_config`); returns the spec (steps possibly capped) and notes."""
        notes = []
        self._device(spec.device)
        spec.steps, note = self._cap(spec.steps)
        if note:
            notes.append(note)
        spec.offline = self._dataset(spec.offline) if spec.offline else None
        for name in LIMITS:
            v = getattr(spec, name)
            lo, hi = self.limits(name)
            if (v is not None or name == "seed") and not (_whole(v) and lo <= v <= hi):
                raise JobError(f"{name.replace('_', ' ').capitalize()} must be a whole number from "
                               f"{lo:,} to {hi:,}, got {str(v)[:30]}.")
        lo, hi = UPDATES_PER_STEP
        u = spec.updates_per_step
        if u is not None and not (isinstance(u, (int, float)) and not isinstance(u, bool)
                                  and lo < u <= hi):
            raise JobError(f"Updates per env step must be a number above {lo:g} and at most "
                           f"{hi:g}, got {str(u)[:30]}.")
        spec.benchmark = self.run_config(spec).benchmark.name
        return spec, notes

    @staticmethod
    def _benchmark(benchmark) -> str:
        """A benchmark name the library resolves (`cmrl.envs.tasks.resolve_benchmark`)."""
        bench = benchmark.strip() if isinstance(benchmark, str) else ""
        try:
            resolve_benchmark(BenchmarkConfig(name=bench))
        except user_errors() as e:
            raise JobError(_sentence(user_message(e))) from None
        return bench

    def _device(self, device) -> None:
        """A device choice; cuda only where torch sees one (on a cluster: Ray finds a GPU node)."""
        if device not in DEVICES:
            raise JobError(f"Device must be auto, cpu or cuda, not {str(device)[:30]!r}.")
        if device == "cuda" and not self.ray_address and not cuda_available():
            raise JobError("Device cuda was asked for, but torch sees no CUDA device on this "
                           "machine: choose auto or cpu.")

    # -- recipes ------------------------------------------------------------------------------------
    def validate_recipe(self, spec: RecipeSpec) -> tuple[RecipeSpec, list[str], dict]:
        """Checks a recipe launch; returns the spec, notes for the user and the recipe's extra
        flags (`--steps` when a phase exceeds this page's step cap, the smoke size)."""
        from cmrl.experiments.recipes import RECIPES

        if spec.recipe not in RECIPES:
            raise JobError(f"Unknown recipe {str(spec.recipe)[:40]!r}; choose one of "
                           f"{', '.join(RECIPES)} (or custom, with the trainer's flags).")
        spec.benchmark = self._benchmark(spec.benchmark)
        self._device(spec.device)
        lo, hi = self.limits("seed")
        if not (_whole(spec.seed) and lo <= spec.seed <= hi):
            raise JobError(f"Seed must be a whole number from {lo:,} to {hi:,}, got "
                           f"{str(spec.seed)[:30]}.")
        notes, extra = [], {}
        smoke_steps, smoke_episodes = self.recipe_smoke or (None, None)
        phases = RECIPES[spec.recipe].phases(spec.benchmark, spec.seed, spec.device, smoke_steps,
                                             smoke_episodes)
        budget = max((p.config.train.steps for p in phases if p.config is not None), default=0)
        if smoke_steps is not None:
            extra = {"steps": smoke_steps, "data_episodes": smoke_episodes}
            notes.append(f"smoke size on this page (CMRL_RECIPE_SMOKE): {smoke_steps} steps per "
                         f"training phase, {smoke_episodes} data episode(s) per noise level")
        if budget > self.max_steps:
            extra["steps"] = min(self.max_steps, extra.get("steps", self.max_steps))
            notes.append(f"the recipe asks for {budget:,} steps in a phase; every training phase "
                         f"is capped at {extra['steps']:,} steps on this page (CMRL_MAX_TRAIN_STEPS)")
        if spec.recipe == "full" and not (spec.device == "cuda" or (spec.device == "auto"
                                                                     and cuda_available())):
            notes.append("the full recipe is sized for a GPU: on this CPU it takes days (see the "
                         "estimate); quick is the CPU recipe")
        return spec, notes, extra

    def build_recipe_argv(self, spec: RecipeSpec, run_dir: Path, extra: dict) -> list[str]:
        argv = [self.python, "-m", "cmrl", "recipe", "--name", spec.recipe, "--run-dir",
                str(run_dir), "--benchmark", spec.benchmark, "--seed", str(spec.seed), "--device",
                spec.device, "--no-progress"]
        from cmrl.experiments.recipes import DATA_CACHE

        # a cluster job runs in a folder of Ray's: its data goes to an absolute root
        root = self.data_root or (ROOT / DATA_CACHE if self.ray_address else None)
        if root is not None:
            argv += ["--data-root", str(root)]
        if extra.get("steps") is not None:
            argv += ["--steps", str(extra["steps"])]
        if extra.get("data_episodes") is not None:
            argv += ["--data-episodes", str(extra["data_episodes"])]
        return argv

    def _dataset(self, offline: str) -> str:
        """The offline dataset's folder, if it lies inside the allowed roots and is a dataset made
        by `python -m cmrl data`."""
        from cmrl.data import DatasetError, read_manifest

        try:
            path = self.roots.dataset(offline)
        except InputError as e:
            raise JobError(str(e)) from None
        try:
            read_manifest(path)
        except DatasetError as e:
            raise JobError(f"{display_path(path)} is not a dataset made by `python -m cmrl data`: "
                           f"{str(e).replace(str(path), display_path(path))[:300]}") from None
        return str(path)

    def launch(self, spec: TrainSpec | RecipeSpec) -> tuple[JobStatus, list[str]]:
        """Starts a custom run (TrainSpec) or a recipe (RecipeSpec) now, or queues it while
        another runs; returns its status and notes for the user."""
        with self._lock:
            self._check_can_launch()
            recipe = isinstance(spec, RecipeSpec)
            if recipe:
                spec, notes, extra = self.validate_recipe(spec)
            else:
                spec, notes = self.validate(spec)
            name = spec.name.strip() if spec.name and spec.name.strip() else (
                f"{spec.recipe if recipe else spec.agent}-{spec.benchmark.replace(':', '_')}-"
                f"s{spec.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
            run = self.run_dir(name)
            if run.exists() and any(run.iterdir()):
                raise JobError(f"A run called {name!r} exists already: pick it in the run list and "
                               "press Resume, or choose another name.")
            run.mkdir(parents=True, exist_ok=True)
            spec.name = name
            job = {"name": name, "spec": dict(spec.__dict__), "launches": [], "created": time.time()}
            if recipe:
                job["spec"].update(agent="cmrl", extra=extra)
            argv = (self.build_recipe_argv(spec, run, extra) if recipe
                    else self.build_argv(spec, run))
            self._launch(name, run, argv, job, None if recipe else spec.steps, spec.device)
            return self.status(name), notes

    def resume(self, name: str, steps: int | None = None, device: str | None = None
               ) -> tuple[JobStatus, list[str]]:
        """A custom run resumes from its checkpoint (`train --resume`), to `steps` if given; a
        recipe by running its command again: `run_recipe` skips finished phases and resumes the
        interrupted one from its checkpoint (`steps` is not used: it keeps its own budget)."""
        with self._lock:
            self._check_can_launch()
            st = self.status(name)
            run, job = st.run_dir, _read_json(st.run_dir / JOB_FILE)
            spec = job.get("spec") or {}
            if st.stoppable:
                raise JobError(f"{name} is {st.state} already.")
            if st.recipe:
                if st.state == "finished":
                    raise JobError(f"{name} has finished every phase of the {st.recipe} recipe: "
                                   "launch a new run to train again.")
                rspec, _, extra = self.validate_recipe(RecipeSpec(
                    spec.get("recipe", ""), spec.get("benchmark", ""), spec.get("seed", 0),
                    device or spec.get("device", "auto"), name))
                argv = self.build_recipe_argv(rspec, run, spec.get("extra") or extra)
                notes, target = [], None
            else:
                if not has_resumable_state(run):
                    raise JobError(f"{name} has no checkpoint to resume from yet (it stopped "
                                   "before its first checkpoint): launch a new run instead.")
                steps, note = self._cap(steps) if steps is not None else (None, "")
                notes, target = [note] if note else [], steps or st.target_steps
                if target and st.step >= target:
                    raise JobError(f"{name} has already reached {st.step:,} of {target:,} steps: "
                                   "raise the steps field above that to train it further, then "
                                   "Resume.")
                if device is not None:
                    self._device(device)
                argv = [self.python, "-m", "cmrl", "train", "--resume", "--run-dir", str(run),
                        "--no-progress", *(["--steps", str(steps)] if steps else []),
                        *(["--device", device] if device else [])]
            self._launch(name, run, argv, job, target, device or spec.get("device", "auto"))
            return self.status(name), notes
