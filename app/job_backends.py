"""Where the Train tab's runs execute: processes on this machine (`LocalProcesses`, the default) or
jobs on a Ray cluster (`RayJobs`, with CMRL_RAY_ADDRESS / `python app.py --ray-address`).

`jobs.JobManager` keeps every launch's record in its run directory and asks a backend only to start
one launch, poll it, stop it and show its log; a launch's record names the backend that ran it.
`poll` answers (state, exit code, message) with state one of pending (waiting for the cluster's
resources), running, ended (with its exit code), stopped (on the cluster, not by this page) or lost
(gone without an exit code: the page was restarted meanwhile, or the cluster forgot the job).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import uuid
from pathlib import Path

from .common import ROOT

LOG_FILE = "train.log"


class JobError(RuntimeError):
    """A launch, stop or resume that cannot be done; the message says why and what to do."""


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
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            if run_dir is not None:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "cmrl" not in cmd or Path(run_dir).name not in cmd:
                    return False  # the pid was reused by something else
        except OSError:
            return False
    return True


def log_tail(run_dir: Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    """The last non-empty lines of a run's train.log."""
    try:
        with open(Path(run_dir) / LOG_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join([x for x in text.replace("\r", "\n").splitlines() if x.strip()][-lines:])


def job_env() -> dict[str, str]:
    """What a run needs in its environment besides the page's: headless rendering, no hub
    downloads, unbuffered output (so the log follows the run)."""
    return {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONUNBUFFERED": "1"}


class LocalProcesses:
    """Each launch a process in a session of its own on this machine (it outlives the page, which
    finds it again by pid); `jobs.JobManager` runs one at a time and queues the rest."""

    kind = "local"
    queues = False
    stop_words = "SIGINT to its process group; the last checkpoint is kept"

    def __init__(self):
        self._procs: dict[int, subprocess.Popen] = {}  # the processes this page started: reaped here

    def start(self, run: Path, argv: list[str], command: str, device: str, cpus: int) -> dict:
        env = {**os.environ, **job_env()}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        with open(run / LOG_FILE, "ab") as log:
            log.write(f"\n$ {command}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(argv, cwd=str(ROOT), env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as e:
                raise JobError(f"Could not start the training process: {e}") from e
        self._procs[proc.pid] = proc
        return {"pid": proc.pid, "pgid": proc.pid}

    def poll(self, run: Path, launch: dict) -> tuple[str, int | None, str]:
        proc = self._procs.get(launch.get("pid"))
        if proc is not None and proc.poll() is not None:
            del self._procs[proc.pid]
            return "ended", proc.returncode, ""
        return ("running", None, "") if pid_alive(launch.get("pid"), run) else ("lost", None, "")

    def stop(self, launch: dict, force: bool = False) -> None:
        # SIGINT: the CLI exits cleanly, its last checkpoint intact. A child started while SIGINT
        # was ignored here (an app run in the background) inherits that: SIGTERM then. Checkpoints
        # are atomic, so the SIGKILL of a run that lingers loses only the steps since the last one.
        sig = signal.SIGINT if signal.getsignal(signal.SIGINT) != signal.SIG_IGN else signal.SIGTERM
        try:
            os.killpg(launch.get("pgid") or launch["pid"], signal.SIGKILL if force else sig)
        except ProcessLookupError:
            pass

    def log(self, run: Path, launch: dict, lines: int) -> str:
        return log_tail(run, lines)


class RayJobs:
    """Each launch a Ray job (`ray.job_submission`) on the cluster whose dashboard is at `address`:
    its entrypoint is the command a local launch runs, with this page's `cmrl` package shipped
    along (runtime_env py_modules); it asks for `cpus` CPUs and, on device cuda, a GPU, and the
    cluster places or queues it. Run directories must lie on storage the page and every node see
    at the same path. Ray is imported only here, only when an address is given."""

    kind = "ray"
    queues = True
    STOP_WAIT_S = 30
    stop_words = f"Ray sends it SIGINT, SIGKILL after {STOP_WAIT_S} s; the last checkpoint is kept"

    def __init__(self, address: str, python: str = "python"):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise JobError("Launching on a Ray cluster needs Ray's job client on this page: "
                           "pip install -r requirements-ray.txt") from None
        try:
            self.client = JobSubmissionClient(address)
        except Exception as e:  # noqa: BLE001 (Ray raises ConnectionError, ValueError, ...)
            raise JobError(f"Could not reach the Ray cluster at {address}: {str(e)[:300]}") from None
        self.address, self.python = address, python

    def start(self, run: Path, argv: list[str], command: str, device: str, cpus: int) -> dict:
        job_id = f"cmrl-{run.name}-{uuid.uuid4().hex[:8]}"
        env = dict(job_env(), OMP_NUM_THREADS=str(cpus), RAY_JOB_STOP_SIGNAL="SIGINT",
                   RAY_JOB_STOP_WAIT_TIME_S=str(self.STOP_WAIT_S))
        try:
            self.client.submit_job(
                entrypoint=shlex.join([self.python, *argv[1:]]), submission_id=job_id,
                entrypoint_num_cpus=cpus, entrypoint_num_gpus=1 if device == "cuda" else None,
                runtime_env={"py_modules": [str(ROOT / "cmrl")], "env_vars": env},
                metadata={"run_dir": str(run)})
        except Exception as e:  # noqa: BLE001
            raise JobError(f"The Ray cluster at {self.address} refused the job: {str(e)[:300]}") from None
        return {"ray_job": job_id, "address": self.address}

    def poll(self, run: Path, launch: dict) -> tuple[str, int | None, str]:
        try:
            info = self.client.get_job_info(launch["ray_job"])
        except Exception as e:  # noqa: BLE001 (unreachable, or a restarted cluster forgot it)
            return "lost", None, f"the Ray cluster gives no news of job {launch['ray_job']}: {str(e)[:200]}"
        state = info.status.value
        message = info.message or ""
        if len(message) > 900:  # Ray appends up to 20,000 characters of log: its head and tail
            message = message[:300] + " … " + message[-500:]
        if state in ("PENDING", "RUNNING"):
            return state.lower(), None, ""
        if state == "STOPPED":
            return "stopped", None, message
        code = 0 if state == "SUCCEEDED" else info.driver_exit_code
        return "ended", (-1 if code is None else code), message

    def stop(self, launch: dict, force: bool = False) -> None:
        if not force:  # Ray itself kills a job that lingers (RAY_JOB_STOP_WAIT_TIME_S)
            try:
                self.client.stop_job(launch["ray_job"])
            except Exception as e:  # noqa: BLE001
                raise JobError(f"The Ray cluster could not stop {launch['ray_job']}: {str(e)[:300]}") from None

    def log(self, run: Path, launch: dict, lines: int) -> str:
        try:
            text = self.client.get_job_logs(launch["ray_job"])
        except Exception as e:  # noqa: BLE001
            return f"(no log from the Ray cluster: {str(e)[:200]})"
        return "\n".join([x for x in text.splitlines() if x.strip()][-lines:])
