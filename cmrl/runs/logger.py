"""Metrics logging with pluggable writers: `metrics.jsonl` (one JSON object per line) and a terminal
progress bar. A writer is anything with `write(record: dict)` and `close()`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .checkpoint import atomic_write_bytes

# -- metric keys ------------------------------------------------------------------------------------
# Evaluation results are logged as "eval_<split>_<metric>/<task>", e.g. "eval_test_success/
# window-close-v3"; these two functions are the only places that know the format.
EVAL_SPLITS = ("train", "test")
EVAL_METRICS = ("success", "return", "zeroshot")


def eval_key(split: str, metric: str, task: str) -> str:
    """The metrics key of one evaluation figure."""
    if split not in EVAL_SPLITS or metric not in EVAL_METRICS:
        raise ValueError(f"unknown evaluation split/metric {split!r}/{metric!r}")
    return f"eval_{split}_{metric}/{task}"


def parse_eval_key(key: str) -> tuple[str, str, str] | None:
    """(split, metric, task) of an evaluation key, None for any other key."""
    if not key.startswith("eval_") or "/" not in key:
        return None
    head, task = key[len("eval_"):].split("/", 1)
    split, _, metric = head.partition("_")
    if split not in EVAL_SPLITS or metric not in EVAL_METRICS or not task:
        return None
    return split, metric, task


def eval_record(result: dict) -> dict:
    """The metrics keys of an evaluation's result (`evaluation.evaluate`'s JSON): success, return
    and zero-shot success per split and task."""
    out = {}
    for split, part in result["splits"].items():
        for task, r in part["tasks"].items():
            out[eval_key(split, "success", task)] = r["success_rate"]
            out[eval_key(split, "return", task)] = r["mean_return"]
            out[eval_key(split, "zeroshot", task)] = r["zero_shot_success"]
    return out


def eval_values(record: dict, split: str | None = None, metric: str | None = None) -> dict:
    """{task: value} of a metrics record's evaluation figures of one split and metric (either
    None: any), keyed by (split, metric, task) when either is None."""
    out = {}
    for key, value in record.items():
        parsed = parse_eval_key(key)
        if parsed is None or (split and parsed[0] != split) or (metric and parsed[1] != metric):
            continue
        out[parsed[2] if split and metric else parsed] = value
    return out


def eval_series(rows: list[dict], metric: str, x_key: str = "step"
                ) -> tuple[list, dict[str, list], set[str]]:
    """One evaluation metric's history in a run's metrics rows: (x, {task: one value per x, None
    where the row lacks the task}, the tasks logged under the held-out split). x is each row's
    `x_key` counter (its `step` when missing); only rows with that metric count."""
    evals = [(r, eval_values(r, metric=metric)) for r in rows]
    evals = [(r, vals) for r, vals in evals if vals]
    xs = [r.get(x_key, r.get("step")) for r, _ in evals]
    series: dict[str, list] = {}
    held_out: set[str] = set()
    for i, (_, vals) in enumerate(evals):
        for (split, _, task), value in vals.items():
            series.setdefault(task, [None] * len(evals))[i] = value
            if split == "test":
                held_out.add(task)
    return xs, series, held_out


class JsonlWriter:
    def __init__(self, path: str | Path, truncate_after: dict[str, int] | None = None):
        """`truncate_after` (resuming): counters of the checkpoint resumed from, e.g.
        {"grad_steps": 4000, "env_steps": 0}; lines a killed run logged after it (any of these
        counters beyond the checkpoint's) are dropped. Counting every counter, not one "step",
        keeps an offline phase's history when its run goes on online (env steps start at 0)."""
        self.path = Path(path)
        if truncate_after is not None and self.path.exists():
            # The kept lines go to a new file swapped in by a rename, so a kill now leaves the old
            # or the new history, never a half-written one.
            kept = [line for line in self.path.read_text().splitlines()
                    if _within(line, truncate_after)]
            atomic_write_bytes(self.path, "".join(k + "\n" for k in kept).encode())
        self._f = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")

    def close(self) -> None:
        self._f.close()


def _within(line: str, limits: dict[str, int]) -> bool:
    """A metrics line none of whose counters in `limits` is beyond it (unreadable lines: False)."""
    try:
        rec = json.loads(line)
        counters = [int(rec[k]) <= v for k, v in limits.items() if k in rec]
    except (ValueError, TypeError, AttributeError):
        return False
    return bool(counters) and all(counters)


class TensorBoardWriter:
    """TensorBoard scalars under `log_dir`, one per numeric key of each record (the metrics.jsonl
    keys, e.g. `kl`, `eval_test_success/window-close-v3`), at the record's `step`. Resuming at
    `purge_step` hides what a killed run wrote after its checkpoint, as metrics.jsonl does."""

    COUNTERS = ("step", "env_steps", "grad_steps", "iteration")

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("train.tensorboard needs the optional tensorboard package: "
                              "pip install tensorboard") from e
        self._w = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, record: dict) -> None:
        step = record.get("step")
        if not isinstance(step, int):
            return
        for key, value in record.items():
            if (key in self.COUNTERS or isinstance(value, bool)
                    or not isinstance(value, (int, float)) or not math.isfinite(value)):
                continue
            self._w.add_scalar(key, value, step)

    def close(self) -> None:
        self._w.close()


class ProgressWriter:
    """tqdm bar over the step budget, showing the latest headline metrics."""

    KEYS = ("success", "critic_loss", "alpha")

    def __init__(self, total: int, initial: int, unit: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True,
                        disable=not enabled, file=sys.stderr)
        self.last = initial

    def write(self, record: dict) -> None:
        step = int(record.get("step", self.last))
        self.bar.update(max(0, step - self.last))
        self.last = step
        shown = {k: f"{record[k]:.3g}" for k in self.KEYS if isinstance(record.get(k), (int, float))}
        if shown:
            self.bar.set_postfix(shown)

    def close(self) -> None:
        self.bar.close()


class CallbackWriter:
    """Hands every record to a function (e.g. a UI)."""

    def __init__(self, fn):
        self.write = fn

    def close(self) -> None:
        pass


class MetricsLogger:
    def __init__(self, *writers):
        self.writers = list(writers)

    def log(self, record: dict) -> None:
        for w in self.writers:
            w.write(record)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def read_metrics(run_dir, max_rows: int | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl in order (the last `max_rows` lines when given); a
    line cut by a kill while it is written, or not a JSON object, is skipped; no file: []."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines[-max_rows:] if max_rows else lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
