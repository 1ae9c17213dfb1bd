"""The goal probe: a linear map from the context z to where the goal is, fitted by `cmrl diagnose`
and kept beside a checkpoint so the app can draw where the agent believes the goal is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np


def fit_goal_probe(z: np.ndarray, goals: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Least-squares map [z, 1] -> goal position: weights [L + 1, G]."""
    x = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    return np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ goals)


def apply_goal_probe(weights: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(z), np.ones((len(z), 1))], axis=1) @ weights


GOAL_PROBE_FILE = "goal_probe.json"
_MAX_PROBE_BYTES = 1 << 16


def save_goal_probe(run_dir: str | Path, report: dict) -> Path:
    """Keep a diagnosis' goal probe beside the checkpoint (the app draws the agent's belief)."""
    if "goal_probe" not in report:
        raise ValueError("this report has no goal probe (no meta-train task was diagnosed)")
    path = Path(run_dir) / GOAL_PROBE_FILE
    path.write_text(json.dumps({"weights": report["goal_probe"]["weights"],
                                "fitted_on": report["goal_probe"]["fitted_on"]}))
    return path


def load_goal_probe(run_dir: str | Path,
                    latent_dim: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """The probe z -> goal position saved with a checkpoint, or None (absent or unusable). The file
    must be a plain file inside the run folder (links are not followed out of it)."""
    run_dir = Path(run_dir)
    path = run_dir / GOAL_PROBE_FILE
    try:
        real = path.resolve(strict=True)
        if real.parent != run_dir.resolve() or not real.is_file() \
                or real.stat().st_size > _MAX_PROBE_BYTES:
            return None
        w = np.asarray(json.loads(real.read_text())["weights"], np.float64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if w.ndim != 2 or w.shape[0] != latent_dim + 1 or not np.isfinite(w).all():
        return None
    return lambda z: apply_goal_probe(w, np.asarray(z, np.float64).reshape(1, -1))[0]
