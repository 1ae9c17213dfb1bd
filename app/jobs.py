"""Training runs launched from the app: `python -m cmrl train ...` as separate processes.

Every job lives in its run directory `RUNS/<name>/` next to what the trainer writes there:

    app_job.json   what the app launched: the argv (and its command text), pid, process group,
                   start time, stop requests and exit codes (one entry per launch or resume)
    train.log      the process's stdout and stderr

So the job list is rebuilt from disk on every refresh: it survives page reloads and app restarts.
A process is alive if its pid exists, is not a zombie and its command line names its run directory.
Processes start in their own session (`start_new_session=True`): Stop sends SIGINT to the process
group (the CLI leaves the last checkpoint intact and exits), then SIGTERM and SIGKILL if it lingers.
One run at a time per app; a hosted page (CMRL_HOSTED=1) launches nothing. Every launch is capped
even without settings: at most DEFAULT_MAX_STEPS steps (CMRL_MAX_TRAIN_STEPS changes it) and
DEFAULT_MAX_SECONDS of wall time (CMRL_MAX_TRAIN_SECONDS), after which the run is stopped like Stop
does (its last checkpoint kept). Every numeric field has a range (`LIMITS`), and an offline dataset
must be one made by `python -m cmrl data` inside the page's allowed roots (`roots.py`).
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

from .common import ROOT, InputError, display_path, env_flag
from .roots import Roots

JOB_FILE = "app_job.json"
LOG_FILE = "train.log"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
AGENTS = ("cmrl", "pearl", "sm")
BENCHMARKS = ("ml4", "ml10", "ml45")
DEVICES = ("auto", "cpu", "cuda")
PRIOR_DATA = ("none", "expert")
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
    state: str  # running | stopping | finished | stopped | failed | interrupted
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

    @property
    def alive(self) -> bool:
        return self.state in ("running", "stopping")

    @property
    def progress(self) -> str:
        if self.target_steps:
            return f"{self.step:,}/{self.target_steps:,} ({100 * self.step / self.target_steps:.0f}%)"
        return f"{self.step:,}"


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


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


def read_metrics(run_dir: Path, max_rows: int = 5000) -> list[dict]:
    """Rows of metrics.jsonl (a torn last line while the trainer writes is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines()[-max_rows:]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


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
                 max_seconds: float | None = None, roots: Roots | None = None):
        self.runs_dir = Path(runs_dir) if runs_dir else ROOT / "runs" / "app"
        self.hosted = env_flag("CMRL_HOSTED") if hosted is None else hosted
        self.max_steps = max_steps or _env_cap("CMRL_MAX_TRAIN_STEPS", DEFAULT_MAX_STEPS)
        self.max_seconds = max_seconds or _env_cap("CMRL_MAX_TRAIN_SECONDS", DEFAULT_MAX_SECONDS)
        self.roots = roots or Roots()
        self.python = python or sys.executable
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._procs: dict[str, subprocess.Popen] = {}

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
            launches = _read_json(p).get("launches") or [{}]
            jobs.append((launches[0].get("started") or p.stat().st_mtime, p.parent.name))
        return [n for _, n in sorted(jobs, reverse=True)]  # newest first

    def status(self, name: str) -> JobStatus:
        run = self.run_dir(name)
        job = _read_json(run / JOB_FILE)
        if not job:
            raise JobError(f"No app-launched run called {name!r} in {display_path(self.runs_dir)}.")
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
        device = info.get("device") or self._device_from_log(run)
        if not device:
            asked = (job.get("spec") or {}).get("device", "auto")
            device = (f"auto → {'cuda' if cuda_available() else 'cpu'}" if asked == "auto"
                      else asked)
        exit_code = last.get("exit_code")
        message = ""
        if last.get("time_limit"):
            message = (f"stopped at this page's time limit of {self.max_seconds / 3600:g} h "
                       "(CMRL_MAX_TRAIN_SECONDS); its last checkpoint is kept")
        if alive:
            state = "stopping" if last.get("stop_requested") else "running"
        elif last.get("stop_requested"):
            state = "stopped"
        elif exit_code == 0 or (target and step >= target and exit_code is None):
            state = "finished"
        elif exit_code is not None:
            state = "failed"
            message = log_tail(run, 3)
        else:
            state = "interrupted"
        return JobStatus(name, run, state, pid, job.get("spec", {}).get("agent", "?"),
                         job.get("spec", {}).get("benchmark", "?"), target, step, device,
                         launches[0].get("started"), last.get("command", ""), exit_code, message)

    @staticmethod
    def _device_from_log(run: Path) -> str | None:
        m = re.search(r", device (\S+), run dir", log_tail(run, 200))
        return m.group(1) if m else None

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
        if self.hosted:
            raise JobError("Training is switched off on this hosted demo page (CMRL_HOSTED=1), so "
                           "that it cannot be used to burn compute. Run the app locally "
                           "(`bash scripts/run_app.sh`) to train, or use `python -m cmrl train`.")
        busy = self.running()
        if busy:
            j = busy[0]
            raise JobError(f"A training run is already running: {j.name} ({j.agent}, {j.progress} "
                           f"steps). This app runs one at a time: stop it or wait for it to finish.")

    def _cap(self, steps: int) -> tuple[int, str]:
        if steps > self.max_steps:
            return self.max_steps, (f"steps capped at {self.max_steps:,} on this page "
                                    "(CMRL_MAX_TRAIN_STEPS)")
        return steps, ""

    def limits(self, name: str) -> tuple[int, int]:
        """The range of a whole-number field of a launch (`LIMITS`, None there: the step cap)."""
        lo, hi = LIMITS[name]
        return lo, self.max_steps if hi is None else hi

    def build_argv(self, spec: TrainSpec, run_dir: Path) -> list[str]:
        argv = [self.python, "-m", "cmrl", "train", "--run-dir", str(run_dir), "--agent", spec.agent,
                "--benchmark", spec.benchmark, "--steps", str(spec.steps), "--seed", str(spec.seed),
                "--prior-data", spec.prior_data, "--device", spec.device, "--no-progress"]
        if spec.offline:
            argv += ["--offline", str(spec.offline)]
        for flag, value in (("--horizon", spec.horizon), ("--envs-per-task", spec.envs_per_task),
                            ("--warmup-steps", spec.warmup_steps),
                            ("--updates-per-step", spec.updates_per_step),
                            ("--eval-every", spec.eval_every),
                            ("--checkpoint-every", spec.checkpoint_every)):
            if value is not None:
                argv += [flag, str(value)]
        return argv + list(spec.extra)

    def validate(self, spec: TrainSpec) -> tuple[TrainSpec, list[str]]:
        """Checks every field; returns the spec (steps possibly capped) and notes for the user."""
        notes = []
        if spec.agent not in AGENTS:
            raise JobError(f"Unknown agent {spec.agent!r}; choose one of {', '.join(AGENTS)}.")
        bench = (spec.benchmark or "").strip()
        if not (bench in BENCHMARKS or bench.startswith("ml1:")):
            raise JobError(f"Unknown benchmark {bench[:60]!r}; choose ml4, ml10, ml45 or "
                           "ml1:<env-name> (e.g. ml1:window-close-v3).")
        if bench.startswith("ml1:"):
            from cmrl.tasks import all_env_names

            if bench[4:] not in all_env_names():
                raise JobError(f"Unknown Meta-World env {bench[4:][:60]!r} in {bench[:70]!r}.")
        spec.benchmark = bench
        if spec.prior_data not in PRIOR_DATA:
            raise JobError(f"Prior data must be 'none' or 'expert', not {spec.prior_data!r}.")
        if spec.device not in DEVICES:
            raise JobError(f"Device must be auto, cpu or cuda, not {spec.device!r}.")
        if spec.device == "cuda" and not cuda_available():
            raise JobError("Device cuda was asked for, but torch sees no CUDA device on this "
                           "machine: choose auto or cpu.")
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
        return spec, notes

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

    def launch(self, spec: TrainSpec) -> tuple[JobStatus, list[str]]:
        with self._lock:
            self._check_can_launch()
            spec, notes = self.validate(spec)
            name = spec.name.strip() if spec.name and spec.name.strip() else (
                f"{spec.agent}-{spec.benchmark.replace(':', '_')}-s{spec.seed}-"
                f"{time.strftime('%Y%m%d-%H%M%S')}")
            run = self.run_dir(name)
            if run.exists() and any(run.iterdir()):
                raise JobError(f"A run called {name!r} exists already: pick it in the run list and "
                               "press Resume, or choose another name.")
            run.mkdir(parents=True, exist_ok=True)
            spec.name = name
            argv = self.build_argv(spec, run)
            job = {"name": name, "spec": spec.__dict__, "launches": []}
            self._start(name, run, argv, job, spec.steps)
            return self.status(name), notes

    def resume(self, name: str, steps: int | None = None, device: str | None = None
               ) -> tuple[JobStatus, list[str]]:
        with self._lock:
            self._check_can_launch()
            st = self.status(name)
            run = st.run_dir
            if not (run / "state").is_dir() and not (run / ".state.old").is_dir():
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
            self._start(name, run, argv, job, target)
            return self.status(name), notes

    def _start(self, name: str, run: Path, argv: list[str], job: dict, steps: int | None) -> None:
        env = dict(os.environ)
        env.setdefault("MUJOCO_GL", "egl")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                         else "")
        shown = ["python"] + [display_path(Path(a)) if a == str(run) else a for a in argv[1:]]
        command = shlex.join(shown)
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
            job.setdefault("launches", []).append({"pid": proc.pid, "pgid": proc.pid, "argv": argv,
                                                   "command": command, "started": started,
                                                   "deadline": started + self.max_seconds,
                                                   "steps": steps, "exit_code": None})
            _write_json(run / JOB_FILE, job)
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

    def _stop_at_time_limit(self, name: str) -> None:
        path = self.runs_dir / name / JOB_FILE
        with self._file_lock:
            job = _read_json(path)
            if not job.get("launches") or job["launches"][-1].get("time_limit"):
                return  # stopped already (by the watcher thread or a status check)
            job["launches"][-1]["time_limit"] = True
            _write_json(path, job)
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
                _write_json(path, job)

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
            _write_json(path, job)
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
