"""Training runs launched from the app as separate processes: a recipe (`python -m cmrl recipe
--name quick ...`, `cmrl/experiments/recipes.py`: data made on demand, then offline and/or online phases) or a
custom run (`python -m cmrl train ...` with the trainer's flags).

Every job lives in its run directory `RUNS/<name>/` next to what the trainer writes there:

    app_job.json   what the app launched: the spec, the argv (and its command text), pid, process
                   group, start time, stop requests and exit codes (one entry per launch or
                   resume); `queued` while the job waits for its turn, `cancelled` if it never ran
    train.log      the process's stdout and stderr
    status.json    (recipes) phase, progress, rate and ETA, written by the run itself
                   (`cmrl.runs.run_status`)

So the job list is rebuilt from disk on every refresh: it survives page reloads and app restarts.
A process is alive if its pid exists, is not a zombie and its command line names its run directory.
Processes start in their own session (`start_new_session=True`): Stop sends SIGINT to the process
group (the CLI leaves the last checkpoint intact and exits), then SIGTERM and SIGKILL if it lingers.

One run at a time per app (`MAX_RUNNING`); a launch or resume while one runs is queued (at most
`MAX_QUEUED` waiting, in their run dirs' app_job.json) and starts when the running one ends: the
watcher thread of the ending process starts the next, and `pump()` (called on every page refresh and
by a daemon poller while anything is queued) does it after an app restart. `cancel()` drops a queued
job (or stops a running one). A hosted page (CMRL_HOSTED=1) launches and queues nothing.

Every launch is capped even without settings: at most DEFAULT_MAX_STEPS steps (CMRL_MAX_TRAIN_STEPS
changes it; a recipe whose phases ask for more gets `--steps <cap>`, said in the notes) and
DEFAULT_MAX_SECONDS of wall time (CMRL_MAX_TRAIN_SECONDS), after which the run is stopped like Stop
does (its last checkpoint kept). Every numeric field has a range (`LIMITS`), and an offline dataset
must be one made by `python -m cmrl data` inside the page's allowed roots (`roots.py`).

Recipes at smoke size (tests, demos): `JobManager(recipe_smoke=(steps, data_episodes))` or the
environment variable CMRL_RECIPE_SMOKE="steps,data_episodes" adds `--steps/--data-episodes` to every
recipe launch; `data_root=` or CMRL_RECIPE_DATA_ROOT sets `--data-root`, where recipes cache the data
they make (default: the library's data/cache).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cmrl.runs.checkpoint import atomic_write_json, has_resumable_state
from cmrl.config import (AGENT_KINDS, DEVICES, PRIOR_DATA,  # the library's choice lists, not copies
                         BenchmarkConfig, RunConfig, check_bounds)
from cmrl.envs.tasks import resolve_benchmark
from cmrl.errors import user_errors, user_message
from cmrl.runs.logger import read_metrics

from .common import ROOT, InputError, display_path, env_flag
from .roots import Roots

JOB_FILE = "app_job.json"
LOG_FILE = "train.log"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
AGENTS = AGENT_KINDS
LAUNCH_CONFIG = "launch_config.json"
"""The validated RunConfig of a custom launch, in its run directory (`train --config`)."""
RECIPE = "recipe"
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


class JobError(RuntimeError):
    """A launch, stop or resume that cannot be done; the message says why and what to do."""


def device_summary() -> str:
    """Which device `--device auto` picks here, in words."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} (GPU; `auto` uses it)"
        return f"cpu: {os.cpu_count()} cores, torch {torch.__version__}; no CUDA device (`auto` uses the CPU)"
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


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


def recipe_choices() -> list[tuple[str, str]]:
    """(title, name) of the library's recipes, then custom."""
    from cmrl.experiments.recipes import RECIPES

    return [(r.title, r.name) for r in RECIPES.values()] + [
        ("custom (the trainer's flags)", CUSTOM)]


def _smoke_from_env() -> tuple[int, int] | None:
    """CMRL_RECIPE_SMOKE="steps,data_episodes" (both positive whole numbers), else None."""
    text = os.environ.get("CMRL_RECIPE_SMOKE", "").strip()
    if not text:
        return None
    try:
        steps, episodes = (int(x) for x in text.split(","))
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

    @property
    def alive(self) -> bool:
        return self.state in ("running", "stopping")

    @property
    def what(self) -> str:
        return f"recipe {self.recipe}" if self.recipe else self.agent

    @property
    def progress(self) -> str:
        if self.state == "queued":
            return f"queued (position {self.queue_position})"
        if self.target_steps:
            return f"{self.step:,}/{self.target_steps:,} ({100 * self.step / self.target_steps:.0f}%)"
        return f"{self.step:,}"

    @property
    def fraction(self) -> float | None:
        if not self.target_steps:
            return None
        return max(0.0, min(1.0, self.step / self.target_steps))

    @property
    def eta(self) -> str:
        if not self.alive:
            return ""
        return "" if self.eta_s is None else format_seconds(self.eta_s)


def _sentence(message: str) -> str:
    """A library message as the page writes its own: capitalised (unless it opens with a config
    field's name, e.g. `train.prior_data must be ...`)."""
    if re.match(r"\w+\.\w+", message):
        return message
    return message[:1].upper() + message[1:]


def format_seconds(s: float | None) -> str:
    """1 h 05 min, 4 min 10 s, 12 s."""
    if s is None:
        return "?"
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def pid_alive(pid: int | None, run_dir: Path | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when `run_dir` is given, its command line names it."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            if run_dir is not None:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "cmrl" not in cmd or Path(run_dir).name not in cmd:
                    return False  # the pid was reused by something else
        except OSError:
            return False
    return True


def _read_status(run_dir: Path) -> dict | None:
    from cmrl.runs.run_status import read_status

    return read_status(run_dir)


def log_tail(run_dir: Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    path = Path(run_dir) / LOG_FILE
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return "\n".join([x for x in text.splitlines() if x.strip()][-lines:])


class JobManager:
    def __init__(self, runs_dir: Path | None = None, hosted: bool | None = None,
                 max_steps: int | None = None, python: str | None = None,
                 max_seconds: float | None = None, roots: Roots | None = None,
                 recipe_smoke: tuple[int, int] | None = None, data_root: Path | None = None):
        self.runs_dir = Path(runs_dir) if runs_dir else ROOT / "runs" / "app"
        self.recipe_smoke = recipe_smoke or _smoke_from_env()
        env_root = os.environ.get("CMRL_RECIPE_DATA_ROOT", "").strip()
        self.data_root = Path(data_root) if data_root else (Path(env_root) if env_root else None)
        self.hosted = env_flag("CMRL_HOSTED") if hosted is None else hosted
        self.max_steps = max_steps or _env_cap("CMRL_MAX_TRAIN_STEPS", DEFAULT_MAX_STEPS)
        self.max_seconds = max_seconds or _env_cap("CMRL_MAX_TRAIN_SECONDS", DEFAULT_MAX_SECONDS)
        self.roots = roots or Roots()
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._poller: threading.Thread | None = None

    # -- listing ------------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise JobError(f"Invalid run name {str(name)[:70]!r}: use letters, digits, '.', '_' and "
                           "'-' (at most 64 characters, no slashes).")
        return self.runs_dir / name

    def names(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        jobs = []
        for p in self.runs_dir.glob(f"*/{JOB_FILE}"):
            job = _read_json(p)
            launches = job.get("launches") or [{}]
            jobs.append((launches[0].get("started") or job.get("created") or p.stat().st_mtime,
                         p.parent.name))
        return [n for _, n in sorted(jobs, reverse=True)]  # newest first

    def status(self, name: str) -> JobStatus:
        run = self.run_dir(name)
        job = _read_json(run / JOB_FILE)
        if not job:
            raise JobError(f"No app-launched run called {name!r} in {display_path(self.runs_dir)}.")
        spec = job.get("spec") or {}
        recipe = spec.get("recipe")
        if job.get("queued") or (job.get("cancelled") and not job.get("launches")):
            queued = bool(job.get("queued"))
            pos = self._queue_position(name) if queued else None
            return JobStatus(name, run, "queued" if queued else "cancelled", None,
                             spec.get("agent", "cmrl"), spec.get("benchmark", "?"), None, 0,
                             spec.get("device", "auto"), None, (job.get("queued") or {}).get(
                                 "command", ""), message=job.get("start_error", ""),
                             recipe=recipe, queue_position=pos)
        launches = job.get("launches") or [{}]
        last = launches[-1]
        pid = last.get("pid")
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid and proc.poll() is not None:
            self._record_exit(name, proc.returncode)
            job = _read_json(run / JOB_FILE)
            last = (job.get("launches") or [{}])[-1]
        alive = pid_alive(pid, run) and last.get("exit_code") is None
        if (alive and not last.get("stop_requested") and not last.get("time_limit")
                and time.time() > last.get("deadline", float("inf"))):
            self._stop_at_time_limit(name)  # its watcher is gone (the app was restarted)
            job = _read_json(run / JOB_FILE)
            last = (job.get("launches") or [{}])[-1]
        rows = read_metrics(run, max_rows=3)
        step = int(rows[-1].get("step", 0)) if rows else 0
        info = _read_json(run / "config.json")
        target = last.get("steps") or job.get("spec", {}).get("steps")
        cfg_steps = (info.get("config") or {}).get("train", {}).get("steps")
        target = int(target or cfg_steps or 0) or None
        device = info.get("device") or (_read_status(run) or {}).get("device")
        if not device:
            asked = (job.get("spec") or {}).get("device", "auto")
            device = (f"auto → {'cuda' if cuda_available() else 'cpu'}" if asked == "auto"
                      else asked)
        exit_code = last.get("exit_code")
        run_status = _read_status(run) if recipe else None
        if run_status:
            step = int(run_status.get("step") or 0)
            target = int(run_status.get("total") or 0) or None
            device = run_status.get("device") or device
        message = ""
        if last.get("time_limit"):
            message = (f"stopped at this page's time limit of {self.max_seconds / 3600:g} h "
                       "(CMRL_MAX_TRAIN_SECONDS); its last checkpoint is kept")
        if alive:
            state = "stopping" if last.get("stop_requested") else "running"
        elif last.get("stop_requested"):
            state = "stopped"
        elif exit_code == 0 or (exit_code is None and (
                (run_status or {}).get("state") == "finished" if recipe
                else (target and step >= target))):
            state = "finished"
        elif exit_code is not None:
            state = "failed"
            message = (run_status or {}).get("message") or log_tail(run, 3)
        else:
            state = "interrupted"
        rs = run_status or {}
        return JobStatus(name, run, state, pid, spec.get("agent", "cmrl" if recipe else "?"),
                         spec.get("benchmark", "?"), target, step, device,
                         launches[0].get("started"), last.get("command", ""), exit_code, message,
                         recipe=recipe, phase=rs.get("phase"), phases=list(rs.get("phases") or []),
                         unit=rs.get("unit") or "steps", rate=rs.get("rate"),
                         eta_s=rs.get("eta_s"), precision=rs.get("precision") or "")

    def list(self) -> list[JobStatus]:
        out = []
        for n in self.names():
            try:
                out.append(self.status(n))
            except JobError:
                continue
        return out

    def running(self) -> list[JobStatus]:
        return [j for j in self.list() if j.alive]

    # -- launching ----------------------------------------------------------------------------------
    def _check_can_launch(self) -> None:
        """Hosted pages launch nothing; a full queue takes nothing more."""
        if self.hosted:
            raise JobError("Training is switched off on this hosted demo page (CMRL_HOSTED=1), so "
                           "that it cannot be used to burn compute. Run the app locally "
                           "(`bash scripts/run_app.sh`) to train, or use `python -m cmrl train`.")
        if len(self.queued()) >= MAX_QUEUED:
            raise JobError(f"The queue is full: {MAX_QUEUED} runs are waiting for their turn "
                           "behind the running one. Cancel one of them or wait.")

    # -- the queue ------------------------------------------------------------------------------------
    def queued(self) -> list[str]:
        """Names of the queued jobs, first in line first."""
        if not self.runs_dir.is_dir():
            return []
        waiting = []
        for p in self.runs_dir.glob(f"*/{JOB_FILE}"):
            q = _read_json(p).get("queued")
            if isinstance(q, dict):
                waiting.append((q.get("since") or 0, p.parent.name))
        return [n for _, n in sorted(waiting)]

    def _queue_position(self, name: str) -> int | None:
        names = self.queued()
        return names.index(name) + 1 if name in names else None

    def _enqueue(self, name: str, run: Path, argv: list[str], job: dict, steps: int | None) -> None:
        with self._file_lock:
            job = _read_json(run / JOB_FILE) or job
            job["queued"] = {"argv": argv, "command": self._command(argv, run), "steps": steps,
                             "since": time.time()}
            job.setdefault("created", time.time())
            atomic_write_json(run / JOB_FILE, job)
        self._start_poller()

    def _start_or_queue(self, name: str, run: Path, argv: list[str], job: dict,
                        steps: int | None) -> list[str]:
        """Starts the job now if nothing runs (and nothing waits before it), else queues it."""
        if len(self.running()) < MAX_RUNNING and not self.queued():
            self._start(name, run, argv, job, steps)
            return []
        self._enqueue(name, run, argv, job, steps)
        return [f"{name} is queued (position {self._queue_position(name)}): it starts when the "
                "running run ends. Cancel it with the Cancel button."]

    def pump(self) -> str | None:
        """Starts the first queued job if nothing runs; returns its name (None if none started).
        Called when a run ends, on every page refresh and by the poller (so a queue survives an
        app restart)."""
        if self.hosted or not self.queued():
            return None
        with self._lock:
            if len(self.running()) >= MAX_RUNNING:
                return None
            for name in self.queued():
                run = self.runs_dir / name
                job = _read_json(run / JOB_FILE)
                q = job.get("queued") or {}
                try:
                    self._start(name, run, list(q["argv"]), job, q.get("steps"))
                    return name
                except (JobError, KeyError, TypeError) as e:
                    with self._file_lock:
                        job = _read_json(run / JOB_FILE)
                        job.pop("queued", None)
                        job["cancelled"] = time.time()
                        job["start_error"] = f"could not start: {e}"[:500]
                        atomic_write_json(run / JOB_FILE, job)
            return None

    def _start_poller(self) -> None:
        """A daemon thread that pumps the queue every 2 s while anything waits (the running run
        may belong to an earlier app process, with no watcher thread here)."""
        with self._file_lock:
            if self._poller is not None and self._poller.is_alive():
                return
            self._poller = threading.Thread(target=self._poll, daemon=True, name="job-queue")
            self._poller.start()

    def _poll(self) -> None:
        while self.queued():
            try:
                self.pump()
            except Exception:  # noqa: BLE001 (a torn file; the next round reads it again)
                pass
            time.sleep(2.0)

    def cancel(self, name: str) -> JobStatus:
        """Drops a queued job from the queue, or stops a running one (like `stop`)."""
        st = self.status(name)
        if st.alive:
            return self.stop(name)
        if st.state != "queued":
            raise JobError(f"{name} is neither queued nor running ({st.state}): nothing to cancel.")
        path = st.run_dir / JOB_FILE
        with self._file_lock:
            job = _read_json(path)
            if not job.pop("queued", None):
                raise JobError(f"{name} has just started: press Stop to stop it.")
            if not job.get("launches"):
                job["cancelled"] = time.time()
            atomic_write_json(path, job)
        return self.status(name)

    def _cap(self, steps: int) -> tuple[int, str]:
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
        if not _whole(spec.steps) or spec.steps < 1:
            raise JobError(f"Steps must be a whole number >= 1, got {str(spec.steps)[:30]}.")
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

    @staticmethod
    def _device(device) -> None:
        if device not in DEVICES:
            raise JobError(f"Device must be auto, cpu or cuda, not {str(device)[:30]!r}.")
        if device == "cuda" and not cuda_available():
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
        if self.data_root is not None:
            argv += ["--data-root", str(self.data_root)]
        if extra.get("steps") is not None:
            argv += ["--steps", str(extra["steps"])]
        if extra.get("data_episodes") is not None:
            argv += ["--data-episodes", str(extra["data_episodes"])]
        return argv

    def estimate(self, recipe: str, benchmark: str, device: str) -> dict:
        """`cmrl.experiments.recipes.estimate_seconds` for a launch from this page (its data root)."""
        from cmrl.experiments.recipes import DATA_CACHE, estimate_seconds, get_recipe

        spec, _, _ = self.validate_recipe(RecipeSpec(recipe, benchmark, 0, device))
        root = self.data_root or (ROOT / DATA_CACHE)
        return estimate_seconds(get_recipe(spec.recipe), spec.benchmark, spec.device, root)

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
            if isinstance(spec, RecipeSpec):
                spec, notes, extra = self.validate_recipe(spec)
                what = f"{spec.recipe}"
            else:
                spec, notes = self.validate(spec)
                what = spec.agent
            name = spec.name.strip() if spec.name and spec.name.strip() else (
                f"{what}-{spec.benchmark.replace(':', '_')}-s{spec.seed}-"
                f"{time.strftime('%Y%m%d-%H%M%S')}")
            run = self.run_dir(name)
            if run.exists() and any(run.iterdir()):
                raise JobError(f"A run called {name!r} exists already: pick it in the run list and "
                               "press Resume, or choose another name.")
            run.mkdir(parents=True, exist_ok=True)
            spec.name = name
            if isinstance(spec, RecipeSpec):
                argv = self.build_recipe_argv(spec, run, extra)
                job = {"name": name, "spec": dict(spec.__dict__, agent="cmrl", extra=extra),
                       "launches": [], "created": time.time()}
                steps = None
            else:
                argv = self.build_argv(spec, run)
                job = {"name": name, "spec": spec.__dict__, "launches": [],
                       "created": time.time()}
                steps = spec.steps
            notes += self._start_or_queue(name, run, argv, job, steps)
            return self.status(name), notes

    def resume(self, name: str, steps: int | None = None, device: str | None = None
               ) -> tuple[JobStatus, list[str]]:
        with self._lock:
            self._check_can_launch()
            st = self.status(name)
            run = st.run_dir
            if st.alive or st.state == "queued":
                raise JobError(f"{name} is {st.state} already.")
            if st.recipe:
                return self._resume_recipe(st, steps, device)
            if not has_resumable_state(run):
                raise JobError(f"{name} has no checkpoint to resume from yet (it stopped before its "
                               "first checkpoint): launch a new run instead.")
            notes = []
            if steps is not None:
                if not _whole(steps) or steps < 1:
                    raise JobError(f"Steps must be a whole number >= 1, got {str(steps)[:30]}.")
                steps, note = self._cap(steps)
                if note:
                    notes.append(note)
            target = steps or st.target_steps
            if target and st.step >= target:
                raise JobError(f"{name} has already reached {st.step:,} of {target:,} steps: raise "
                               "the steps field above that to train it further, then Resume.")
            if device is not None and device not in DEVICES:
                raise JobError(f"Device must be auto, cpu or cuda, not {str(device)[:30]!r}.")
            if device == "cuda" and not cuda_available():
                raise JobError("Device cuda was asked for, but torch sees no CUDA device here.")
            argv = [self.python, "-m", "cmrl", "train", "--resume", "--run-dir", str(run),
                    "--no-progress"]
            if steps:
                argv += ["--steps", str(steps)]
            if device:
                argv += ["--device", device]
            job = _read_json(run / JOB_FILE)
            notes += self._start_or_queue(name, run, argv, job, target)
            return self.status(name), notes

    def _resume_recipe(self, st: JobStatus, steps, device) -> tuple[JobStatus, list[str]]:
        """A recipe resumes by running its command again: `run_recipe` skips finished phases
        and resumes the interrupted one from its checkpoint."""
        job = _read_json(st.run_dir / JOB_FILE)
        spec = job.get("spec") or {}
        if st.state == "finished":
            raise JobError(f"{st.name} has finished every phase of the {st.recipe} recipe: "
                           "launch a new run to train again.")
        notes = []  # a recipe resumes with its own budget: `steps` is not used
        rspec = RecipeSpec(spec.get("recipe", ""), spec.get("benchmark", ""), spec.get("seed", 0),
                           spec.get("device", "auto"), st.name)
        if device is not None:
            rspec.device = device
        rspec, _, extra = self.validate_recipe(rspec)
        argv = self.build_recipe_argv(rspec, st.run_dir, spec.get("extra") or extra)
        notes += self._start_or_queue(st.name, st.run_dir, argv, job, None)
        return self.status(st.name), notes

    def _command(self, argv: list[str], run: Path) -> str:
        shown = ["python"] + [display_path(Path(a)) if a == str(run) else a for a in argv[1:]]
        return shlex.join(shown)

    def _start(self, name: str, run: Path, argv: list[str], job: dict, steps: int | None) -> None:
        env = dict(os.environ)
        env.setdefault("MUJOCO_GL", "egl")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                         else "")
        command = self._command(argv, run)
        with open(run / LOG_FILE, "ab") as log:
            log.write(f"\n$ {command}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(argv, cwd=str(ROOT), env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as e:
                raise JobError(f"Could not start the training process: {e}") from e
        started = time.time()
        with self._file_lock:
            job = _read_json(run / JOB_FILE) or job
            job.pop("queued", None)
            job.setdefault("launches", []).append({"pid": proc.pid, "pgid": proc.pid, "argv": argv,
                                                   "command": command, "started": started,
                                                   "deadline": started + self.max_seconds,
                                                   "steps": steps, "exit_code": None})
            atomic_write_json(run / JOB_FILE, job)
        self._procs[name] = proc
        threading.Thread(target=self._wait, args=(name, proc), daemon=True,
                         name=f"job-{name}").start()

    def _wait(self, name: str, proc: subprocess.Popen) -> None:
        try:
            rc = proc.wait(timeout=self.max_seconds)
        except subprocess.TimeoutExpired:
            self._stop_at_time_limit(name)
            rc = proc.wait()
        self._record_exit(name, rc, proc.pid)  # reaped: no zombie
        try:
            self.pump()  # the next queued run, if any
        except Exception:  # noqa: BLE001 (the poller and the next refresh try again)
            pass

    def _stop_at_time_limit(self, name: str) -> None:
        path = self.runs_dir / name / JOB_FILE
        with self._file_lock:
            job = _read_json(path)
            if not job.get("launches") or job["launches"][-1].get("time_limit"):
                return  # stopped already (by the watcher thread or a status check)
            job["launches"][-1]["time_limit"] = True
            atomic_write_json(path, job)
        try:
            self.stop(name)
        except JobError:
            pass  # it ended meanwhile

    def _record_exit(self, name: str, rc: int, pid: int | None = None) -> None:
        with self._file_lock:
            path = self.runs_dir / name / JOB_FILE
            job = _read_json(path)
            if not job.get("launches"):
                return
            last = job["launches"][-1]
            if pid is not None and last.get("pid") != pid:
                return
            if last.get("exit_code") is None:
                last["exit_code"] = rc
                last["ended"] = time.time()
                atomic_write_json(path, job)

    # -- stopping -----------------------------------------------------------------------------------
    def stop(self, name: str, grace_s: float = 10.0) -> JobStatus:
        st = self.status(name)
        if not st.alive:
            raise JobError(f"{name} is not running ({st.state}).")
        path = st.run_dir / JOB_FILE
        with self._file_lock:
            job = _read_json(path)
            last = job["launches"][-1]
            last["stop_requested"] = time.time()
            atomic_write_json(path, job)
        pgid = last.get("pgid") or st.pid
        # SIGINT: the CLI exits cleanly and says the last checkpoint is intact. A child started while
        # SIGINT was ignored here (an app run in the background) inherits that, so use SIGTERM then;
        # checkpoints are atomic, so even SIGKILL loses nothing but the steps since the last one.
        first = signal.SIGTERM if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else signal.SIGINT
        try:
            os.killpg(pgid, first)
        except ProcessLookupError:
            pass
        threading.Thread(target=self._escalate, args=(st.pid, pgid, st.run_dir, grace_s),
                         daemon=True).start()
        return self.status(name)

    @staticmethod
    def _escalate(pid: int, pgid: int, run: Path, grace_s: float) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.time() + grace_s
            while time.time() < deadline:
                if not pid_alive(pid, run):
                    return
                time.sleep(0.25)
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
