"""Where the Train tab's runs execute: processes on this machine (`LocalProcesses`, the default) or
jobs on a Ray cluster (`RayJobs`, with CMRL_RAY_ADDRESS). `jobs.JobManager` keeps the records; a
backend only starts, polls, stops and shows the log of one launch. `poll` answers (state, exit code,
message), state one of pending (on the cluster's queue), running, ended, stopped (on the cluster,
not from this page) or lost (gone without an exit code, or the cluster forgot it: a JobError).
"""

from __future__ import annotations

import contextlib
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
    """True if `pid` runs (not a zombie) and, when `run_dir` is given, its command line names it
    (else the pid was reused by something else). Without /proc: whether the pid exists."""
    try:
        os.kill(pid, 0) if pid else None
        proc = Path(f"/proc/{pid}")
        if not proc.is_dir():
            return bool(pid)
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X") and (
            run_dir is None or ("cmrl" in cmd and Path(run_dir).name in cmd))
    except PermissionError:
        return True
    except (OSError, IndexError):
        return False


def log_tail(run_dir: Path, lines: int = 30, max_bytes: int = 64_000) -> str:
    """The last non-empty lines of a run's train.log."""
    try:
        with open(Path(run_dir) / LOG_FILE, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
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

    queues = False
    stop_words = "SIGINT to its process group; the last checkpoint is kept"

    def __init__(self):
        self._procs: dict[int, subprocess.Popen] = {}  # the processes this page started: reaped here

    def start(self, run: Path, launch: dict) -> dict:
        env = {**os.environ, **job_env()}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        with open(run / LOG_FILE, "ab") as log:
            log.write(f"\n$ {launch['command']}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(launch["argv"], cwd=str(ROOT), env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as e:
                raise JobError(f"Could not start the training process: {e}") from e
        self._procs[proc.pid] = proc
        return {"pid": proc.pid, "pgid": proc.pid}

    @staticmethod
    def waiting(launch: dict) -> bool:
        """A launch that waits in this page's queue: recorded, not started, not cancelled."""
        return "queued_since" in launch and not any(k in launch for k in ("pid", "ray_job", "ended"))

    def poll(self, run: Path, launch: dict) -> tuple[str, int | None, str]:
        if self.waiting(launch):
            return "pending", None, ""
        proc = self._procs.get(launch.get("pid"))
        if proc is not None and proc.poll() is not None:
            return "ended", self._procs.pop(proc.pid).returncode, ""
        return ("running", None, "") if pid_alive(launch.get("pid"), run) else ("lost", None, "")

    def stop(self, launch: dict, force: bool = False) -> None:
        # SIGINT: the CLI exits cleanly, its last checkpoint intact. A child started while SIGINT
        # was ignored here (an app run in the background) inherits that: SIGTERM then. Checkpoints
        # are atomic, so the SIGKILL of a run that lingers loses only the steps since the last one.
        sig = signal.SIGINT if signal.getsignal(signal.SIGINT) != signal.SIG_IGN else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.get("pgid") or launch["pid"], signal.SIGKILL if force else sig)

    def log(self, run: Path, launch: dict, lines: int) -> str:
        return log_tail(run, lines)


class RayJobs:
    """Each launch a Ray job (`ray.job_submission`) on the cluster whose dashboard is at `address`:
    its entrypoint is the command a local launch runs with `python`, this page's `cmrl` package
    shipped along (runtime_env py_modules); it asks for `cpus` CPUs and, on device cuda, a GPU, and
    the cluster places or queues it. Run directories must lie on storage the page and every node
    see at the same path. Ray is imported only here, only when an address is given."""

    queues = True
    STOP_WAIT_S = 30
    stop_words = f"Ray sends it SIGINT, SIGKILL after {STOP_WAIT_S} s; the last checkpoint is kept"

    def __init__(self, address: str, python: str = "python", cpus: int = 1):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise JobError("Launching on a Ray cluster needs Ray's job client on this page: "
                           "pip install -r requirements-ray.txt") from None
        self.address, self.python, self.cpus = address, python, cpus
        self.client = self._ask("could not be reached", JobSubmissionClient, address)

    def _ask(self, failed: str, call, *args, **kwargs):
        """call(*args, **kwargs); any error of Ray's becomes one JobError line."""
        try:
            return call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError, ...)
            raise JobError(f"The Ray cluster at {self.address} {failed}: {str(e)[:300]}") from None

    def start(self, run: Path, launch: dict) -> dict:
        job_id = f"cmrl-{run.name}-{uuid.uuid4().hex[:8]}"
        env = dict(job_env(), OMP_NUM_THREADS=str(self.cpus), RAY_JOB_STOP_SIGNAL="SIGINT",
                   RAY_JOB_STOP_WAIT_TIME_S=str(self.STOP_WAIT_S))
        self._ask("refused the job", self.client.submit_job,
                  entrypoint=shlex.join([self.python, *launch["argv"][1:]]),
                  submission_id=job_id, entrypoint_num_cpus=self.cpus,
                  entrypoint_num_gpus=1 if launch.get("device") == "cuda" else None,
                  runtime_env={"py_modules": [str(ROOT / "cmrl")], "env_vars": env},
                  metadata={"run_dir": str(run)})
        return {"ray_job": job_id, "address": self.address}

    def poll(self, run: Path, launch: dict) -> tuple[str, int | None, str]:
        info = self._ask(f"gives no news of {launch['ray_job']}", self.client.get_job_info,
                         launch["ray_job"])  # unreachable, or a restarted cluster forgot the job
        state = info.status.value.lower()  # pending, running, stopped, succeeded or failed
        message = info.message or ""
        if len(message) > 900:  # Ray appends up to 20,000 characters of log: its head and tail
            message = message[:300] + " … " + message[-500:]
        if state in ("pending", "running", "stopped"):  # a message only when stopped
            return state, None, message if state == "stopped" else ""
        code = 0 if state == "succeeded" else info.driver_exit_code
        return "ended", (-1 if code is None else code), message

    def stop(self, launch: dict, force: bool = False) -> None:
        if not force:  # Ray itself kills a job that lingers (RAY_JOB_STOP_WAIT_TIME_S)
            self._ask("could not stop it", self.client.stop_job, launch["ray_job"])

    def log(self, run: Path, launch: dict, lines: int) -> str:
        text = self._ask("sends no log", self.client.get_job_logs, launch["ray_job"])
        return "\n".join([x for x in text.splitlines() if x.strip()][-lines:])
