"""Multi-seed sweeps through Ray Tune: a grid of agents x seeds, each trial an ordinary run directory.

`python -m cmrl sweep --agents cmrl,pearl,sm --seeds 0,1,2 --out DIR [train flags]` runs the grid
locally (trials in parallel up to the cores: `--cpus-per-trial` each) or on a Ray cluster
(`--address head:6379`, or `auto` on a node of it). Each trial trains with the project's own trainer
into `DIR/<agent>-s<seed>/` and reports its metrics to Tune as it logs them; a trial whose directory
already holds a run resumes it, so re-running a killed sweep continues where it stopped. At the end
`DIR/sweep.json` holds the aggregate table (for every agent and task, the mean and spread, sample
std, over seeds of the last evaluation's success and return) and the node each trial ran on;
`python -m cmrl report --root DIR` reads the run directories like any others.

On a cluster, DIR (the trials' run directories and Tune's storage_path, DIR/ray) must be storage
every node sees at the same path, such as an NFS mount; the trials run the driver's own `cmrl`
package (shipped with runtime_env py_modules), so the nodes need only its dependencies.

Ray is an optional install (`pip install -r requirements-ray.txt`); nothing else in cmrl imports it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..config import ConfigError, RunConfig
from ..runs.logger import eval_values, parse_eval_key, read_metrics

SWEEP_FILE = "sweep.json"


def trial_dir(out: str | Path, agent: str, seed: int) -> Path:
    return Path(out).resolve() / f"{agent}-s{seed}"


def _run_trial(params: dict) -> None:
    """Ray Tune's function trainable: one (agent, seed) run."""
    import ray
    from ray import tune

    from ..algo.onpolicy import make_trainer
    from ..algo.trainer import start_or_resume

    cfg = RunConfig.from_dict(params["base"])
    cfg.train.agent, cfg.train.seed = params["agent"], int(params["seed"])
    cfg.train.threads = int(params["threads"])
    run_dir = trial_dir(params["out"], params["agent"], params["seed"])
    cfg, resume = start_or_resume(run_dir, None, lambda: cfg, {"train.steps": cfg.train.steps,
                                                               "train.threads": cfg.train.threads})

    node = ray.get_runtime_context().get_node_id()  # where it ran, for sweep.json

    def report(record: dict) -> None:
        tune.report({"node_id": node, **{k.replace("/", "."): v for k, v in record.items()
                                         if isinstance(v, (int, float))}})

    out = make_trainer(cfg, run_dir, resume=resume, progress=False, on_log=report).train()
    if out.get("grad_steps", 0) == 0 and out.get("env_steps", 0) == 0:
        report({"done": 1})


def last_evaluation(run_dir: str | Path) -> dict[str, float]:
    """The last record of a run's metrics.jsonl that carries evaluation results."""
    evals = [r for r in read_metrics(run_dir) if eval_values(r)]
    return evals[-1] if evals else {}


def aggregate(runs: dict[str, list[Path]]) -> dict:
    """Mean and spread over seeds of each agent's last evaluation, per split and task."""
    table: dict = {}
    for agent, dirs in runs.items():
        evals = [last_evaluation(d) for d in dirs]
        evals = [e for e in evals if e]
        tasks: dict = {}
        keys = sorted({k for e in evals for k in e if parse_eval_key(k)})
        for key in keys:
            split, metric, task = parse_eval_key(key)
            vals = np.array([e[key] for e in evals if key in e], dtype=float)
            entry = tasks.setdefault(task, {"split": split, "n_seeds": len(vals)})
            entry[f"{metric}_mean"] = float(vals.mean())
            entry[f"{metric}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        table[agent] = {"runs": [str(d) for d in dirs], "seeds_evaluated": len(evals),
                        "steps": [e.get("step") for e in evals], "tasks": tasks}
    return table


def markdown_table(table: dict) -> str:
    tasks = sorted({t for a in table.values() for t in a["tasks"]},
                   key=lambda t: (next(a["tasks"][t]["split"] for a in table.values()
                                       if t in a["tasks"]) != "train", t))
    head = "| agent | " + " | ".join(tasks) + " |\n|---|" + "---|" * len(tasks) + "\n"
    rows = []
    for agent, a in table.items():
        cells = []
        for t in tasks:
            e = a["tasks"].get(t)
            cells.append(f"{e['success_mean']:.2f} ± {e['success_std']:.2f} (n={e['n_seeds']})"
                         if e and "success_mean" in e else "-")
        rows.append(f"| {agent} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows)


def sweep(base: RunConfig, agents: list[str], seeds: list[int], out: str | Path,
          cpus_per_trial: int = 1, address: str | None = None, max_concurrent: int = 0,
          command: str = "") -> dict:
    """Run the agents x seeds grid through Ray Tune; returns (and writes) the aggregate table."""
    try:
        import ray
        from ray import tune
    except ImportError as e:
        raise ConfigError("sweeps need Ray Tune: pip install -r requirements-ray.txt") from e
    if not agents or not seeds:
        raise ConfigError("a sweep needs at least one agent and one seed")
    base.validate()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if address:
        env = {k: os.environ[k] for k in ("MUJOCO_GL", "HF_HUB_OFFLINE") if k in os.environ}
        try:  # the trials run this cmrl package wherever they land
            ray.init(address=address, log_to_driver=False, runtime_env={
                "py_modules": [str(Path(__file__).resolve().parents[1])], "env_vars": env})
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot reach the Ray cluster at {address}: {e}") from e
    elif not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        trainable = tune.with_resources(_run_trial, {"cpu": cpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space={"agent": tune.grid_search(list(agents)),
                         "seed": tune.grid_search([int(s) for s in seeds]),
                         "base": base.to_dict(), "out": str(out), "threads": cpus_per_trial},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None),
            run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=1))
        grid = tuner.fit()
        errors = [str(r.error) for r in grid if r.error is not None]
        trials = [{"agent": r.config["agent"], "seed": r.config["seed"],
                   "node_id": (r.metrics or {}).get("node_id")} for r in grid]
    finally:
        if not address:
            ray.shutdown()
    runs = {a: [trial_dir(out, a, s) for s in seeds] for a in agents}
    result = {"command": command, "agents": list(agents), "seeds": [int(s) for s in seeds],
              "config": base.to_dict(), "table": aggregate(runs), "trials": trials,
              "errors": errors}
    (out / SWEEP_FILE).write_text(json.dumps(result, indent=2))
    return result
