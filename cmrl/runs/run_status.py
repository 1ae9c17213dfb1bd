"""`status.json` in a run directory: what a run is doing now, written by the process that runs it.

The trainer (through `StatusWriter`, a metrics writer) and the recipe runner write it atomically;
the app and scripts read it (`read_status`) instead of parsing logs. Fields:

    state       "running" | "finished" | "failed" | "stopped"
    phase       "data" | "offline" | "online" (the recipe's phase; a plain run has one)
    phases      the recipe's phases in order
    step, total progress in the phase's unit (gradient steps offline, env steps online)
    unit        "gradient steps" | "env steps"
    rate        units per second over the phase so far (wall clock)
    eta_s       seconds left in the phase at that rate (None until known)
    device, precision, pid, updated (unix time), message (the error, for "failed")
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from .checkpoint import atomic_write_json

STATUS_FILE = "status.json"
STATES = ("running", "finished", "failed", "stopped")


def read_status(run_dir: str | Path) -> dict | None:
    """The run's status, or None when it has none (or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunStatus:
    """Keeps a run's status.json up to date. Cheap enough to call on every metrics record."""

    def __init__(self, run_dir: str | Path, phases: list[str] | None = None, device: str = "",
                 precision: str = ""):
        self.path = Path(run_dir) / STATUS_FILE
        self.data: dict = {"state": "running", "phase": None, "phases": list(phases or []),
                           "step": 0, "total": 0, "unit": "", "rate": None, "eta_s": None,
                           "device": device, "precision": precision, "pid": os.getpid(),
                           "message": ""}
        self._start_step = 0
        self._start_time = time.time()

    def _write(self) -> None:
        self.data["updated"] = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)

    def phase(self, name: str, total: int, unit: str, step: int = 0, **extra) -> None:
        """A phase starts (or resumes at `step`)."""
        if name not in self.data["phases"]:
            self.data["phases"].append(name)
        self.data.update(phase=name, total=int(total), unit=unit, step=int(step), rate=None,
                         eta_s=None, state="running", **extra)
        self._start_step, self._start_time = int(step), time.time()
        self._write()

    def progress(self, step: int) -> None:
        step = int(step)
        elapsed = time.time() - self._start_time
        done = step - self._start_step
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        left = max(self.data["total"] - step, 0)
        self.data.update(step=step, rate=None if rate is None else round(rate, 3),
                         eta_s=None if rate is None else round(left / rate, 1))
        self._write()

    def end(self, state: str, message: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}")
        self.data.update(state=state, message=message[:2000], eta_s=0 if state == "finished"
                         else self.data["eta_s"])
        self._write()

    @contextlib.contextmanager
    def ending(self, own: bool = True):
        """Around a trainer's loop: when it ends, mark the run finished, stopped (interrupted) or
        failed (with the error), if `own` (a caller running several phases ends it itself)."""
        try:
            yield
            if own:
                self.end("finished")
        except KeyboardInterrupt:
            if own:
                self.end("stopped", "interrupted; the last checkpoint is intact")
            raise
        except BaseException as e:
            if own:
                self.end("failed", f"{type(e).__name__}: {e}")
            raise


class StatusWriter:
    """A metrics writer (`logger.MetricsLogger`) that moves the status on with every record."""

    def __init__(self, status: RunStatus):
        self.status = status

    def write(self, record: dict) -> None:
        if "step" in record:
            self.status.progress(record["step"])

    def close(self) -> None:
        pass
