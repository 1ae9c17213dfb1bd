"""The Results tab's data: read what is shipped with the checkpoints, never compute anything new.

Sources under the results root (default `checkpoints/ml4/`), all optional:

- `results.json`, the multi-seed table. Two layouts are read: `python -m cmrl report`'s
  (`agents.<agent>.protocols.<protocol>.tasks.<task>.success.{mean,std,n}`) and the flat one
  (`agents.<agent>.tasks.<task>.{success_mean,success_std,return_mean,return_std}`, `seeds`).
- run directories (config.json + model.safetensors) anywhere below the root, e.g. `cmrl/`, `pearl/`,
  `sm/` or `cmrl-s0/`..., each with `evaluation.json` (`python -m cmrl eval --json`) and
  `metrics.jsonl` (training curves). Their evaluations are averaged over seeds when results.json
  has no entry for that agent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .common import ML4_TASKS, ROOT, display_path
from .jobs import read_metrics

DEFAULT_RESULTS_ROOT = ROOT / "checkpoints" / "ml4"
AGENT_ORDER = ("cmrl", "pearl", "sm")


@dataclass
class Results:
    root: Path
    success: dict[str, dict[str, dict]] = field(default_factory=dict)
    """success[agent][task] = {"mean", "std", "n", "return_mean", "return_std", "split"}"""
    curves: dict[str, list[dict]] = field(default_factory=dict)
    """curves[agent] = [{"label", "x", "returns": {task: [...]}}]"""
    commands: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    held_out: set[str] = field(default_factory=set)
    x_label: str = "env steps"
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.success and not any(self.curves.values())

    def tasks(self) -> list[str]:
        seen: list[str] = []
        for per_task in self.success.values():
            seen += [t for t in per_task if t not in seen]
        for runs in self.curves.values():
            for run in runs:
                seen += [t for t in run["returns"] if t not in seen]
        order = {t: i for i, t in enumerate(ML4_TASKS)}
        return sorted(seen, key=lambda t: (t in self.held_out, order.get(t, 99), t))


def _load_json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"{display_path(path)}: unreadable ({e})")
        return None


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(
        x) else None


def find_run_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob("config.json")
                  if (p.parent / "model.safetensors").is_file())


def _agent_of(run: Path, problems: list[str]) -> tuple[str, int | None, dict]:
    info = _load_json(run / "config.json", problems) or {}
    train = (info.get("config") or {}).get("train") or {}
    return str(info.get("agent") or train.get("agent") or run.name), train.get("seed"), info


def _from_results_json(res: Results, data: dict, protocol: str) -> None:
    agents = data.get("agents") if isinstance(data, dict) else None
    if not isinstance(agents, dict):
        res.problems.append("results.json has no 'agents' object")
        return
    if data.get("command"):
        res.commands.append(("results.json", str(data["command"])))
    if data.get("notes"):
        res.notes.append(str(data["notes"]))
    for agent, entry in agents.items():
        if not isinstance(entry, dict):
            continue
        per_task: dict[str, dict] = {}
        protos = entry.get("protocols")
        if isinstance(protos, dict) and protos:
            p = protos.get(protocol) or next(iter(protos.values()))
            if p.get("command"):
                res.commands.append((f"{agent} evaluation", str(p["command"])))
            for task, e in (p.get("tasks") or {}).items():
                s, r = e.get("success") or {}, e.get("return") or {}
                per_task[task] = {"mean": _num(s.get("mean")), "std": _num(s.get("std")) or 0.0,
                                  "n": int(s.get("n") or 1), "return_mean": _num(r.get("mean")),
                                  "return_std": _num(r.get("std")), "split": e.get("split")}
        elif isinstance(entry.get("tasks"), dict):
            n = len(entry.get("seeds") or []) or 1
            for task, e in entry["tasks"].items():
                per_task[task] = {"mean": _num(e.get("success_mean")),
                                  "std": _num(e.get("success_std")) or 0.0, "n": n,
                                  "return_mean": _num(e.get("return_mean")),
                                  "return_std": _num(e.get("return_std")), "split": e.get("split")}
        if per_task:
            res.success[agent] = per_task
            for task, e in per_task.items():
                if e.get("split") == "test":
                    res.held_out.add(task)


def _from_evaluations(res: Results, runs: list[tuple[str, int | None, Path, dict]]) -> None:
    by_agent: dict[str, list[tuple[Path, dict]]] = {}
    for agent, _seed, run, _info in runs:
        if agent in res.success:
            continue  # results.json already has this agent's multi-seed numbers
        path = run / "evaluation.json"
        if path.is_file():
            ev = _load_json(path, res.problems)
            if isinstance(ev, dict) and isinstance(ev.get("splits"), dict):
                by_agent.setdefault(agent, []).append((run, ev))
                if ev.get("command"):
                    res.commands.append((f"{agent} ({display_path(run)})", str(ev["command"])))
    for agent, evals in by_agent.items():
        acc: dict[str, dict[str, list]] = {}
        for _run, ev in evals:
            for split, part in ev["splits"].items():
                for task, r in ((part or {}).get("tasks") or {}).items():
                    a = acc.setdefault(task, {"s": [], "r": [], "split": split})
                    if _num(r.get("success_rate")) is not None:
                        a["s"].append(r["success_rate"])
                    if _num(r.get("mean_return")) is not None:
                        a["r"].append(r["mean_return"])
                    if split == "test":
                        res.held_out.add(task)
        res.success[agent] = {
            task: {"mean": float(np.mean(a["s"])) if a["s"] else None,
                   "std": float(np.std(a["s"], ddof=1)) if len(a["s"]) > 1 else 0.0,
                   "n": len(a["s"]), "return_mean": float(np.mean(a["r"])) if a["r"] else None,
                   "return_std": float(np.std(a["r"], ddof=1)) if len(a["r"]) > 1 else None,
                   "split": a["split"]}
            for task, a in acc.items()}


def _curves(res: Results, runs: list[tuple[str, int | None, Path, dict]]) -> None:
    offline = 0
    for agent, seed, run, info in runs:
        rows = read_metrics(run)
        if not rows:
            continue
        mode = ((info.get("config") or {}).get("train") or {}).get("mode", "online")
        offline += mode == "offline"
        xkey = "grad_steps" if mode == "offline" else "env_steps"
        xs, returns = [], {}
        evals = [r for r in rows if any(k.startswith(("eval_train_return/", "eval_test_return/"))
                                        for k in r)]
        for r in evals:
            xs.append(r.get(xkey, r.get("step")))
        for r_i, r in enumerate(evals):
            for k, v in r.items():
                if k.startswith(("eval_train_return/", "eval_test_return/")):
                    task = k.split("/", 1)[1]
                    returns.setdefault(task, [None] * len(evals))[r_i] = _num(v)
                    if k.startswith("eval_test"):
                        res.held_out.add(task)
        if xs:
            res.curves.setdefault(agent, []).append(
                {"label": f"seed {seed}" if seed is not None else run.name, "x": xs,
                 "returns": returns, "dir": display_path(run)})
    if offline:
        res.x_label = "gradient steps (offline)" if offline == len(runs) else "env / gradient steps"


def load_results(root: Path | str | None = None, protocol: str = "cmrl") -> Results:
    root = Path(root) if root else DEFAULT_RESULTS_ROOT
    res = Results(root)
    if not root.is_dir():
        return res
    rj = root / "results.json"
    if rj.is_file():
        data = _load_json(rj, res.problems)
        if data is not None:
            _from_results_json(res, data, protocol)
    runs = []
    for run in find_run_dirs(root):
        agent, seed, info = _agent_of(run, res.problems)
        runs.append((agent, seed, run, info))
    order = {a: i for i, a in enumerate(AGENT_ORDER)}
    runs.sort(key=lambda r: (order.get(r[0], 99), r[0], r[1] if r[1] is not None else -1))
    _from_evaluations(res, runs)
    _curves(res, runs)
    res.success = dict(sorted(res.success.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
    return res


def table_rows(res: Results) -> list[list]:
    rows = []
    for agent, per_task in res.success.items():
        for task in res.tasks():
            e = per_task.get(task)
            if not e:
                continue
            s = "-" if e["mean"] is None else (f"{e['mean']:.2f} ± {e['std']:.2f}" if e["n"] > 1
                                               else f"{e['mean']:.2f}")
            r = "-" if e.get("return_mean") is None else (
                f"{e['return_mean']:.1f} ± {e['return_std']:.1f}" if e.get("return_std") is not None
                and e["n"] > 1 else f"{e['return_mean']:.1f}")
            rows.append([agent, task, "held out" if task in res.held_out else "meta-train", s, r,
                         e["n"]])
    return rows
