"""`python -m cmrl bench`: speed figures measured in one run, side by side, on the machine at hand.

Every comparison alternates short timing windows of the two (or more) contenders (A, B, A, B, ...)
and reports the median of the per-round ratios, so that load from other processes hits both alike;
the absolute rates are printed too but only the ratios travel between machines.

1. The SAC update: one full SAC + KL update (twin Q, actor, temperatures, Polyak, context encoder
   and KL) of every agent kind at the default networks and 3 tasks x 128 and 3 x 256, updates/s and
   achieved GFLOP/s (FLOPs from `torch.utils.flop_counter`) against the dense-matmul peak measured
   first in the same run. On CUDA the `graphed` path beside `eager` (`speed_tuning.py`).
2. The soft-modular network alone (forward + backward) against facebookresearch mtrl's
   `SoftModularizedMLP` with the same layers, modules, width and batch (`pip install --no-deps
   mtrl==1.0.0`, benchmark-only, requirements-dev.txt).
3. Our pearl update against Stable-Baselines3 SAC with the same parameter count and batch.
4. bf16 autocast against fp32 for the cmrl update (what `--precision auto` decides from).
5. Collection: env steps/s of the trainer's collector against a bare Meta-World loop.
6. Evaluation (`eval`) and data generation (`data`) on every core: whole runs over worker processes
   against the bare loop (the same tasks' envs stepped with random actions, no policy, no
   rendering) in as many processes, env steps/s (`ratios.eval_vs_bare`, `ratios.data_vs_bare`:
   the worst setup; one key per setup beside them).
7. On CUDA, when present: matmul peak, the network vs mtrl, eager and graphed (the whole update
   as one CUDA graph) for every agent, the cmrl and sm updates at Soft-Module's "deep" width
   (4 x 4 x 128) with 10 tasks (ML10's meta-batch), and bf16 vs fp32; each part saved as it lands.
`--sections` runs some of these only; `--json` is rewritten after each section.
Targets (issues 13, 26): network >= 3x mtrl; pearl >= 1.0x SB3; collection, evaluation and data
>= 0.7x the bare loop.
The figures' `ratios` section is one flat object (`--json FILE`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..algo.agent import MetaAgent
from ..agent_kinds import KINDS, SAC_KINDS
from ..algo.collector import Collector
from ..config import NetworkConfig, RunConfig
from ..envs.metaworld_env import ACTION_DIM, OBS_DIM, TaskPool
from ..algo.cuda_graphs import WARMUP
from ..algo.sac import SACLearner
from ..algo.speed_tuning import has_amx_bf16
from ..envs.tasks import resolve_benchmark

AGENT_KINDS = SAC_KINDS  # the kinds with SAC updates to time (rl2 and maml train on-policy)
TASKS = ("drawer-open-v3", "drawer-close-v3", "window-open-v3")
TEXT_DIM = 384  # MiniLM's width: goal vectors for the agents that read text


# -- timing ---------------------------------------------------------------------------------------
def _summary(rates: dict[str, list[float]]) -> dict:
    """Medians of per-round rates, and of each contender's per-round ratio to the first one."""
    first = next(iter(rates.values()))
    return {"per_s": {k: round(statistics.median(v), 3) for k, v in rates.items()},
            "ratio": {k: round(statistics.median([a / b for a, b in zip(v, first)]), 3)
                      for k, v in rates.items()}}


def describe_machine() -> str:
    """One line for the scripts' output: CPU, torch threads, torch version, load."""
    m = machine_info()
    return f"{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}, load {m['load_avg_1min']}"


def interleaved(contenders: dict[str, Callable[[], object]], seconds: float, rounds: int = 6,
                sync: Callable[[], None] | None = None) -> dict:
    """Calls per second of each contender, measured in `rounds` rounds of one window each (about
    seconds / rounds long; at least one call), the contenders alternating within every round.
    `sync` waits for the device at the end of a window. All contenders share this process (and
    its allocator).
    Returns {"per_s": {name: median}, "ratio": {name: median over rounds of name / first}}."""
    names = list(contenders)
    window = max(seconds / rounds, 0.05)
    rates: dict[str, list[float]] = {k: [] for k in names}
    for fn in contenders.values():  # warm up every contender once
        fn()
    for _ in range(rounds):
        for name in names:
            fn = contenders[name]
            fn()
            if sync:
                sync()
            n, start = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - start < window:
                fn()
                n += 1
                if sync and time.perf_counter() - start >= window:
                    sync()
            if sync:
                sync()
            rates[name].append(n / (time.perf_counter() - start))
    return _summary(rates)


def matmul_peak(device: torch.device, seconds: float) -> dict:
    """Dense fp32 matmul GFLOP/s on this device and thread count: a large square one (the machine's
    peak) and one the size of a default hidden layer ([768 x 256] @ [256 x 256])."""
    out = {}
    for label, (M, K, N) in (("square_1024", (1024, 1024, 1024)), ("layer_768x256x256", (768, 256, 256))):
        a, b = torch.randn(M, K, device=device), torch.randn(K, N, device=device)
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        r = interleaved({label: lambda: a @ b}, seconds / 2, rounds=2, sync=sync)
        out[f"{label}_gflops"] = round(r["per_s"][label] * 2 * M * K * N / 1e9, 1)
    return out


# -- 1. update paths ------------------------------------------------------------------------------
def _update_fixture(kind: str, batch_per_task: int, device: torch.device, impl: str,
                    num_tasks: int = 3, fields: dict | None = None, precision: str = "fp32"):
    """A learner of `kind` on random data, and a zero-argument function doing one update."""
    cfg = RunConfig().updated({"train.agent": kind, "sac.batch_size": batch_per_task,
                               "sac.bc_weight": 2.5, "sac.precision": precision,
                               "train.device": device.type, **(fields or {})})
    tasks = TASKS if num_tasks == 3 else tuple(f"task-{i}" for i in range(num_tasks))
    return update_step(cfg, device, tasks, impl)


def update_step(cfg: RunConfig, device: torch.device, tasks, impl: str | None = None):
    """`cfg`'s agent and learner (update path `impl`, default the config's) on random data for
    `tasks`, and a zero-argument function doing one update: what the bench and
    `recipes.estimate_seconds` time."""
    text_dim = TEXT_DIM if KINDS[cfg.train.agent].uses_text else 0
    torch.manual_seed(0)
    agent = MetaAgent(cfg, OBS_DIM, ACTION_DIM, text_dim, tuple(tasks)).to(device)
    learner = SACLearner(agent, update_impl=impl)
    T, B = len(tasks), cfg.sac.batch_size
    g = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(T, B, OBS_DIM, generator=g),
             "actions": torch.rand(T, B, ACTION_DIM, generator=g) * 2 - 1,
             "rewards": torch.rand(T, B, generator=g),
             "next_obs": torch.randn(T, B, OBS_DIM, generator=g), "dones": torch.zeros(T, B)}
    batch = {k: v.to(device) for k, v in batch.items()}
    context = (torch.randn(T, cfg.sac.context_size, 2 * OBS_DIM + ACTION_DIM + 1, generator=g)
               .to(device) if agent.encoder is not None else None)
    goal = torch.randn(T, agent.goal_dim, generator=g).to(device) if agent.goal_dim else None
    ids = torch.arange(T, device=device)

    def step():
        learner.update(batch, context, goal, ids, read_metrics=False)
    return learner, step


def update_flops(kind: str, batch_per_task: int, num_tasks: int = 3,
                 fields: dict | None = None) -> int:
    """FLOPs of one update (matmuls; torch.utils.flop_counter), counted on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    _, step = _update_fixture(kind, batch_per_task, torch.device("cpu"), "eager", num_tasks, fields)
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def bench_update_paths(seconds: float, device: torch.device, kinds=AGENT_KINDS,
                       batches=(128, 256), num_tasks: int = 3, fields: dict | None = None,
                       label: str = "", graphed: bool = False) -> dict:
    """Update rates and GFLOP/s per configuration: `eager`, and beside it `graphed` (CUDA; the
    capture happens before the timing and is reported apart)."""
    out: dict = {}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    for kind in kinds:
        for B in batches:
            key = f"{kind}_{num_tasks}x{B}{label}"
            steps, learners = {}, {}
            for impl in ["eager"] + (["graphed"] if graphed else []):
                learners[impl], steps[impl] = _update_fixture(kind, B, device, impl, num_tasks, fields)
            if "graphed" in steps:  # warm-up updates and the capture, outside the timing
                for _ in range(WARMUP + 1):
                    steps["graphed"]()
            r = interleaved(steps, seconds, sync=sync)
            fig = _update_figure(kind, B, num_tasks, fields, r)
            if graphed:
                fig["capture_s"] = round(learners["graphed"].capture_seconds or 0.0, 3)
                fig["graphed_fell_back"] = learners["graphed"].impl != "graphed"
            out[key] = fig
            _print_update_line(key, r)
    return out


def _update_figure(kind: str, B: int, num_tasks: int, fields: dict | None, r: dict) -> dict:
    flops = update_flops(kind, B, num_tasks, fields)
    return {"updates_per_s": r["per_s"], "vs_eager": r["ratio"],
            "gflop_per_update": round(flops / 1e9, 3),
            "achieved_gflops": {k: round(v * flops / 1e9, 1) for k, v in r["per_s"].items()},
            "transitions_per_s": {k: round(v * num_tasks * B) for k, v in r["per_s"].items()}}


def _print_update_line(key: str, r: dict) -> None:
    print(f"[bench]   {key}: " + ", ".join(f"{k} {v:.2f} upd/s" for k, v in r["per_s"].items())
          + "; " + ", ".join(f"{k}/eager {v:.2f}x" for k, v in r["ratio"].items() if k != "eager"),
          flush=True)


# -- 2. the network vs mtrl -----------------------------------------------------------------------
def _import_mtrl():
    """mtrl's SoftModularizedMLP and its input types, with `mtrl.utils.types` (which imports gym and
    omegaconf) stood in by the four aliases the component needs. None when mtrl is absent."""
    try:
        import mtrl  # noqa: F401
    except ImportError:
        return None
    from torch import Tensor, nn

    if "mtrl.utils.types" not in sys.modules:
        stub = types.ModuleType("mtrl.utils.types")
        stub.ModelType, stub.TensorType, stub.ConfigType, stub.ListConfigType = nn.Module, Tensor, dict, list
        sys.modules["mtrl.utils.types"] = stub
    try:
        from mtrl.agent.components.soft_modularization import SoftModularizedMLP
        from mtrl.agent.ds.mt_obs import MTObs
        from mtrl.agent.ds.task_info import TaskInfo
    except Exception as e:  # noqa: BLE001 - an incompatible mtrl is reported, not fatal
        return f"mtrl installed but its soft modularization does not import ({type(e).__name__}: {e})"
    return SoftModularizedMLP, MTObs, TaskInfo


def bench_modular_net(seconds: float, device: torch.device, batch: int = 384) -> dict:
    """Forward + backward of our soft-modular network against mtrl's, same layers (4), modules (4),
    width (64) and batch; input: observation + z (46), output 8."""
    from ..nets.modular_net import SoftModularNet

    in_dim, cond_dim, out_dim = OBS_DIM + 7, 7, 2 * ACTION_DIM
    cfg = NetworkConfig()
    torch.manual_seed(0)
    ours = SoftModularNet(in_dim, cond_dim, out_dim, cfg, ensemble=1).to(device)
    x = torch.randn(1, batch, in_dim, device=device)
    cond = torch.randn(1, batch, cond_dim, device=device)

    def ours_step():
        out, _ = ours(x, cond)
        out.sum().backward()
        ours.zero_grad(set_to_none=True)

    contenders = {"ours": ours_step}
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        ours_step()
    fig: dict = {"config": f"{cfg.num_layers} layers x {cfg.num_modules} modules x "
                           f"{cfg.module_width}, batch {batch}, in {in_dim}, out {out_dim}",
                 "ours_params": sum(p.numel() for p in ours.parameters()),
                 "ours_gflop_per_step": round(counter.get_total_flops() / 1e9, 4)}
    mtrl = _import_mtrl()
    if isinstance(mtrl, tuple):
        SoftModularizedMLP, MTObs, TaskInfo = mtrl
        theirs = SoftModularizedMLP(num_experts=cfg.num_modules, in_features=in_dim,
                                    out_features=out_dim, num_layers=cfg.num_layers,
                                    hidden_features=cfg.module_width).to(device)
        obs = x[0]
        info = TaskInfo(encoding=torch.randn(batch, in_dim, device=device), compute_grad=False,
                        env_index=None)

        def mtrl_step():
            out = theirs(MTObs(env_obs=obs, task_obs=None, task_info=info))
            out.sum().backward()
            theirs.zero_grad(set_to_none=True)
        contenders = {"mtrl": mtrl_step, **contenders}
        fig["mtrl_params"] = sum(p.numel() for p in theirs.parameters())
        with FlopCounterMode(display=False) as counter:
            mtrl_step()
        fig["mtrl_gflop_per_step"] = round(counter.get_total_flops() / 1e9, 4)
    else:
        fig["mtrl"] = mtrl or "mtrl not installed (pip install --no-deps mtrl==1.0.0)"
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    r = interleaved(contenders, seconds, sync=sync)
    fig["fwd_bwd_per_s"] = r["per_s"]
    if "mtrl" in contenders:
        fig["ours_vs_mtrl"] = r["ratio"]["ours"]
        # mtrl's net is smaller (three module layers and a per-module output layer, a one-layer
        # routing projection): per FLOP, ours does this many times the arithmetic per second
        fig["ours_vs_mtrl_per_flop"] = round(
            r["ratio"]["ours"] * fig["ours_gflop_per_step"] / fig["mtrl_gflop_per_step"], 3)
    print(f"[bench]   modular net: " + ", ".join(f"{k} {v:.1f}/s" for k, v in r["per_s"].items()),
          flush=True)
    return fig


# -- 3. pearl vs SB3 ------------------------------------------------------------------------------
def _sb3_params(width: int, layers: int = 3) -> int:
    """Trainable parameters of SB3 SAC's actor and twin critics with net_arch [width] * layers."""
    def trunk(n_in):
        return n_in * width + width + (layers - 1) * (width * width + width)
    actor = trunk(OBS_DIM) + 2 * (width * ACTION_DIM + ACTION_DIM)  # mean and log-std heads
    critics = 2 * (trunk(OBS_DIM + ACTION_DIM) + width + 1)
    return actor + critics


def bench_pearl_vs_sb3(seconds: float, batch_per_task: int = 256) -> dict:
    """Our pearl update against SB3 SAC with the same trainable parameter count (actor,
    critics and, ours, the context encoder; SB3's hidden width chosen to match) and the same batch
    (3 x batch_per_task)."""
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.logger import configure
    except ImportError:
        return {"sb3": "stable-baselines3 not installed (pip install -r requirements-dev.txt)"}
    learner, ours = _update_fixture("pearl", batch_per_task, torch.device("cpu"), "eager")
    a = learner.agent
    our_params = sum(p.numel() for m in (a.actor, a.critic, a.encoder) for p in m.parameters())
    layers = len(a.config.net.mlp_hidden)
    width = min(range(16, 2048), key=lambda w: abs(_sb3_params(w, layers) - our_params))
    batch = 3 * batch_per_task
    pool = TaskPool(resolve_benchmark(RunConfig().benchmark))
    env = pool.make_env("drawer-open-v3").env
    model = SAC("MlpPolicy", env, batch_size=batch, policy_kwargs={"net_arch": [width] * layers},
                buffer_size=20000, learning_starts=0, device="cpu", verbose=0)
    rng = np.random.default_rng(0)
    for _ in range(4096):
        model.replay_buffer.add(rng.normal(size=(1, OBS_DIM)).astype(np.float32),
                                rng.normal(size=(1, OBS_DIM)).astype(np.float32),
                                rng.uniform(-1, 1, (1, ACTION_DIM)).astype(np.float32),
                                rng.random(1).astype(np.float32), np.zeros(1), [{}])
    model.set_logger(configure(None, []))
    sb3_params = sum(p.numel() for m in (model.policy.actor, model.policy.critic)
                     for p in m.parameters())
    r = interleaved({"sb3": lambda: model.train(gradient_steps=1, batch_size=batch),
                     "pearl": ours}, seconds)
    fig = {"sb3_config": f"SAC MlpPolicy net_arch {[width] * layers}, batch {batch}",
           "sb3_params": sb3_params, "pearl_params": our_params,
           "updates_per_s": r["per_s"],
           "transitions_per_s": {k: round(v * batch) for k, v in r["per_s"].items()},
           "pearl_vs_sb3": r["ratio"]["pearl"]}
    print(f"[bench]   pearl vs SB3 (equal params {our_params} / {sb3_params}): "
          f"{r['ratio']['pearl']:.2f}x", flush=True)
    return fig


# -- 4. precision -----------------------------------------------------------------------------------
def bench_precision(seconds: float, device: torch.device, kind: str = "cmrl",
                    batch_per_task: int = 256) -> dict:
    """bf16 autocast against fp32, the eager update of `kind`: the evidence `--precision auto` uses."""
    import warnings

    steps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the bf16 warning: this is the measurement
        for precision in ("fp32", "bf16"):
            _, steps[precision] = _update_fixture(kind, batch_per_task, device, "eager",
                                                  precision=precision)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    r = interleaved(steps, seconds, rounds=3, sync=sync)
    fig = {"config": f"{kind} update, 3 x {batch_per_task}", "updates_per_s": r["per_s"],
           "bf16_vs_fp32": r["ratio"]["bf16"],
           "auto_picks": "bf16" if device.type == "cpu" and has_amx_bf16() else "fp32"}
    print(f"[bench]   bf16 vs fp32 ({kind}): {r['ratio']['bf16']:.2f}x; auto picks "
          f"{fig['auto_picks']}", flush=True)
    return fig


# -- 5. collection ----------------------------------------------------------------------------------
def bench_collection(seconds: float, agent_kind: str = "cmrl") -> dict:
    """The trainer's collector (policy forward + z, all meta-train envs in lockstep) against a bare
    Meta-World loop over the same envs with random actions, env steps/s, interleaved."""
    cfg = RunConfig()
    cfg.train.agent = agent_kind
    cfg.benchmark.horizon = 100
    pool = TaskPool(resolve_benchmark(cfg.benchmark))
    tasks = pool.benchmark.train_tasks
    text_dim = TEXT_DIM if KINDS[agent_kind].uses_text else 0
    agent = MetaAgent(cfg, OBS_DIM, ACTION_DIM, text_dim, tasks)
    rng = np.random.default_rng(0)
    bank = torch.randn(len(tasks), 2, text_dim) if text_dim else None
    collector = Collector(agent, pool, tasks, cfg.train.envs_per_task, bank, rng)
    envs = collector.envs
    variations = [pool.variations(t, "train")[0] for t in tasks]

    def bare_round():
        for env, t in zip(envs, collector.env_task):
            env.reset(variations[t])
        done = False
        while not done:
            for env in envs:
                _, _, _, done = env.step(rng.uniform(-1, 1, ACTION_DIM))

    steps = len(envs) * cfg.benchmark.horizon
    r = interleaved({"bare": bare_round, "collector": collector.run_round}, seconds, rounds=4)
    collector.close()
    return {"envs": len(envs), "bare_env_steps_per_s": round(r["per_s"]["bare"] * steps),
            f"{agent_kind}_collection_env_steps_per_s": round(r["per_s"]["collector"] * steps),
            "collection_ratio": r["ratio"]["collector"]}


# -- 6. evaluation and data against the bare loop -----------------------------------------------------
class _FixedText:
    """A stand-in goal-text encoder for timing: a fixed vector per string (no model to load)."""

    dim = TEXT_DIM

    def encode(self, texts):
        items = [texts] if isinstance(texts, str) else list(texts)
        out = np.stack([np.random.default_rng(len(t)).normal(size=self.dim).astype(np.float32)
                        for t in items])
        return out[0] if isinstance(texts, str) else out


def whole_runs(contenders: dict[str, Callable[[], tuple[int, float]]], rounds: int = 3) -> dict:
    """Env steps/s of whole runs (each contender returns (env steps, seconds) of one run),
    alternating within every round after one untimed run each (starts worker processes, builds
    task pools); `_summary` of the rates: ratios to the first contender."""
    for fn in contenders.values():
        fn()
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            steps, secs = fn()
            rates[name].append(steps / secs)
    return _summary(rates)


EVAL_SETUPS = (("ml1:reach-v3", "cmrl"), ("ml1:reach-v3", "pearl"))
"""(benchmark, agent) pairs the eval section times: ML1's one task per split must split over the
workers; cmrl has the costliest forward pass (soft-modular nets, encoder, goal text)."""


def bench_eval(seconds: float, workers: int | None = None, variations: int = 10) -> dict:
    """`evaluation.evaluate` (default protocol: zero-shot, 3 adaptation and 1 evaluation episode
    per variation, both splits, default networks with random weights) against `parallel_eval.
    bare_loop` (the same units, envs, resets and episodes with random actions, no policy) in the
    same number of worker processes, env steps/s of whole runs, alternating."""
    from ..algo import parallel_eval
    from ..algo.evaluation import evaluate

    workers = workers or parallel_eval.default_workers()
    out: dict = {"workers": workers, "variations_per_task": variations}
    pools: dict = {}
    for name, kind in EVAL_SETUPS:
        cfg = RunConfig()
        cfg.benchmark.name, cfg.train.agent = name, kind
        if name not in pools:
            pools[name] = TaskPool(resolve_benchmark(cfg.benchmark))
        pool = pools[name]
        text_dim = TEXT_DIM if KINDS[kind].uses_text else 0
        torch.manual_seed(0)
        agent = MetaAgent(cfg, pool.obs_dim, pool.act_dim, text_dim,
                          pool.benchmark.train_tasks).eval()
        splits = ("train", "test")

        def run_eval():
            start = time.perf_counter()
            res = evaluate(agent, pool, splits, _FixedText(), variations, 3, 1, seed=0,
                           workers=workers)
            steps = sum(r["variations"] * len(r["episode_phases"])
                        for part in res["splits"].values() for r in part["tasks"].values())
            return steps * pool.benchmark.horizon, time.perf_counter() - start

        def run_bare():
            r = parallel_eval.bare_loop(pool, splits, variations, 5, seed=0, workers=workers)
            return r["env_steps"], r["seconds"]

        r = whole_runs({"bare": run_bare, "eval": run_eval})
        key = f"{name.replace(':', '_')}_{kind}"
        out[key] = {"env_steps_per_s": r["per_s"], "eval_vs_bare": r["ratio"]["eval"]}
        print(f"[bench]   eval {key}: bare {r['per_s']['bare']:.0f} steps/s, eval "
              f"{r['per_s']['eval']:.0f} steps/s, {r['ratio']['eval']:.2f}x", flush=True)
    return out


DATA_SETUPS = (("ml1:reach-v3", 10, 10), ("ml10", 3, 2))
"""(benchmark, expert episodes per noise level, random episodes per task) the data section times
(noise levels 0.1, 0.3, 0.5: `cmrl data`'s default)."""


def bench_data(seconds: float, workers: int | None = None) -> dict:
    """`cmrl data` (`generate_dataset`: scripted experts, Minari files written) against
    `generation.bare_loop` (the same jobs in as many processes, random actions, nothing recorded),
    env steps/s of whole runs, alternating; the task pool built before either is timed."""
    import tempfile

    from ..data.generation import bare_loop, default_workers, generate_dataset

    workers = workers or default_workers()
    out: dict = {"workers": workers}
    noise = (0.1, 0.3, 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        for name, episodes, random_episodes in DATA_SETUPS:
            bc = RunConfig().benchmark
            bc.name = name

            def run_data():
                start = time.perf_counter()
                path = generate_dataset(bc, Path(tmp) / "data", episodes, noise, random_episodes,
                                        workers=workers, progress=False, overwrite=True)
                manifest = json.loads((path / "cmrl_dataset.json").read_text())
                steps = sum(t["transitions"] for t in manifest["tasks"].values())
                return steps, time.perf_counter() - start

            def run_bare():
                r = bare_loop(bc, episodes, noise, random_episodes, workers=workers)
                return r["env_steps"], r["seconds"]

            r = whole_runs({"bare": run_bare, "data": run_data}, rounds=2)
            key = name.replace(":", "_")
            out[key] = {"env_steps_per_s": r["per_s"], "data_vs_bare": r["ratio"]["data"],
                        "episodes_per_task": episodes * len(noise) + random_episodes}
            print(f"[bench]   data {key}: bare {r['per_s']['bare']:.0f} steps/s, data "
                  f"{r['per_s']['data']:.0f} steps/s, {r['ratio']['data']:.2f}x", flush=True)
    return out


# -- the whole bench --------------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "amx_bf16": has_amx_bf16(), "torch": torch.__version__, "load_avg_1min": load,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


SECTIONS = ("updates", "modular_net", "sb3", "precision", "collection", "eval", "data", "gpu")
"""The bench's parts, in the order they run (`--sections` picks some; `gpu` runs where CUDA is)."""


def run_bench(seconds: float = 8.0, sections: tuple[str, ...] = SECTIONS,
              on_section: Callable[[dict], None] | None = None) -> dict:
    """The figures of `sections` (all by default). `on_section(figures)` is called after each
    section, so a caller can save what is measured so far (a bench cut short keeps its first parts)."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(SECTIONS)}")
    cpu = torch.device("cpu")
    figures: dict = {"machine": machine_info(), "sections": list(sections)}
    print(f"[bench] {figures['machine']['cpu']}, {figures['machine']['torch_threads']} threads, "
          f"load {figures['machine']['load_avg_1min']}, CUDA: {figures['machine']['cuda']}",
          flush=True)

    def done(name: str) -> None:
        figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        figures["ratios"] = _ratios(figures)
        figures["ceilings"] = ceilings(figures)
        print(f"[bench] section {name} done", flush=True)
        if on_section:
            on_section(figures)

    cpu_parts = {  # section: (what it says it measures, the measurement)
        "updates": ("SAC update", lambda: bench_update_paths(seconds, cpu)),
        "modular_net": ("soft-modular network vs mtrl", lambda: bench_modular_net(seconds, cpu)),
        "sb3": ("pearl vs Stable-Baselines3 SAC", lambda: bench_pearl_vs_sb3(seconds)),
        "precision": ("precision", lambda: bench_precision(seconds, cpu)),
        "collection": ("collection vs bare Meta-World loop", lambda: bench_collection(seconds)),
        "eval": ("evaluation vs bare Meta-World loop, worker processes", lambda: bench_eval(seconds)),
        "data": ("data generation vs bare Meta-World loop, worker processes",
                 lambda: bench_data(seconds))}
    if set(sections) & set(cpu_parts):
        figures["matmul_peak"] = matmul_peak(cpu, seconds)
    for name, (what, measure) in cpu_parts.items():
        if name in sections:
            print(f"[bench] {what} ...", flush=True)
            figures[name] = measure()
            done(name)
    if "gpu" in sections:
        if torch.cuda.is_available():
            figures["gpu"] = bench_gpu(seconds, lambda: done("gpu (part)"), figures)
        else:
            figures["gpu"] = {"skipped": "no CUDA device"}
        done("gpu")
    _print(figures)
    return figures


def bench_gpu(seconds: float, save: Callable[[], None], figures: dict,
              device: torch.device | None = None) -> dict:
    """The CUDA figures: matmul peak, the network vs mtrl, eager and graphed for every agent at
    3 x 256, cmrl and sm at Soft-Module's deep width (4 x 4 x 128) with ML10's 10 tasks, and bf16
    vs fp32. Each part lands in `figures["gpu"]` as soon as it is measured."""
    gpu = device or torch.device("cuda")
    out: dict = {"device": torch.cuda.get_device_name(0) if gpu.type == "cuda" else str(gpu)}
    figures["gpu"] = out
    print("[bench] CUDA: matmul peak, modular net, eager / graphed updates ...", flush=True)
    out["matmul_peak"] = matmul_peak(gpu, seconds)
    out["modular_net"] = bench_modular_net(seconds, gpu)
    save()
    out["updates"], out["deep_ml10"] = {}, {}
    # one configuration at a time, saved as it lands: cmrl first
    jobs = [("updates", "cmrl", 3, {}, ""), ("deep_ml10", "cmrl", 10, {"net.module_width": 128},
                                             "_deep128")]
    jobs += [("updates", k, 3, {}, "") for k in AGENT_KINDS if k != "cmrl"]
    jobs += [("deep_ml10", "sm", 10, {"net.module_width": 128}, "_deep128")]
    for part, kind, num_tasks, fields, label in jobs:
        out[part].update(bench_update_paths(seconds, gpu, kinds=(kind,), batches=(256,),
                                            num_tasks=num_tasks,
                                            fields=fields or None, label=label, graphed=True))
        save()
    out["precision"] = bench_precision(seconds, gpu)
    return out


def _ratios(fig: dict) -> dict:
    """The flat summary (`--json`): every update path's ratio to eager per configuration (CUDA:
    `gpu_` prefix; files from before 2026-12 also hold the retired `fast` and `compiled`), network
    vs mtrl, pearl vs SB3 at equal parameters, collection, evaluation and data vs the bare loop.
    Sections not run leave their keys out."""
    out: dict = {}
    g = fig.get("gpu", {})
    for prefix, part in (("", fig), ("gpu_", g)):
        for key, f in {**part.get("updates", {}), **part.get("deep_ml10", {})}.items():
            for impl, v in f["vs_eager"].items():
                if impl != "eager":
                    out[f"{prefix}{key}_{impl}_vs_eager"] = v
    if "modular_net" in fig:
        out["modular_net_vs_mtrl"] = fig["modular_net"].get("ours_vs_mtrl")
        if "ours_vs_mtrl_per_flop" in fig["modular_net"]:
            out["modular_net_vs_mtrl_per_flop"] = fig["modular_net"]["ours_vs_mtrl_per_flop"]
    if "sb3" in fig:
        out["pearl_update_vs_sb3_equal_params"] = fig["sb3"].get("pearl_vs_sb3")
    if "collection" in fig:
        out["collection_vs_bare"] = fig["collection"]["collection_ratio"]
    if "precision" in fig:
        out["bf16_vs_fp32"] = fig["precision"]["bf16_vs_fp32"]
    for section, key in (("eval", "eval_vs_bare"), ("data", "data_vs_bare")):
        runs = {k: v[key] for k, v in fig.get(section, {}).items() if isinstance(v, dict)}
        if runs:
            out[key] = min(runs.values())  # the worst setup
            out.update({f"{key}_{k}": v for k, v in runs.items()})
    if "modular_net" in g:
        out["gpu_modular_net_vs_mtrl"] = g["modular_net"].get("ours_vs_mtrl")
    if "precision" in g:
        out["gpu_bf16_vs_fp32"] = g["precision"]["bf16_vs_fp32"]
    return out


def ceilings(fig: dict) -> dict:
    """What the targets ask against what this machine could give at most: each ratio that a path
    would reach if every FLOP it counts ran at the dense fp32 matmul peak measured in the same run
    (the larger of the two shapes). A target above its ceiling cannot be met by a faster
    implementation of the same FLOPs on this machine, only by doing fewer.
    `<kind>_<T>x<B>_vs_eager`: peak / the eager update's achieved GFLOP/s; `modular_net_vs_mtrl`:
    (peak / our network's FLOPs per forward + backward) / mtrl's measured rate. `gpu_` prefix: the
    same on CUDA."""
    out: dict = {}
    for prefix, part in (("", fig), ("gpu_", fig.get("gpu", {}))):
        peak = part.get("matmul_peak")
        if not peak:
            continue
        top = max(peak.values())
        for key, f in {**part.get("updates", {}), **part.get("deep_ml10", {})}.items():
            eager = f["achieved_gflops"].get("eager")
            if eager:
                out[f"{prefix}{key}_vs_eager"] = round(top / eager, 2)
        net = part.get("modular_net", {})
        mtrl_rate = net.get("fwd_bwd_per_s", {}).get("mtrl")
        if mtrl_rate and net.get("ours_gflop_per_step"):
            out[f"{prefix}modular_net_vs_mtrl"] = round(top / net["ours_gflop_per_step"] / mtrl_rate, 2)
    return out


def _print(fig: dict) -> None:
    m = fig["machine"]
    print(f"\nmachine: {m['cpu']} ({m['cpu_count']} CPUs), torch {m['torch']}, {m['torch_threads']} "
          f"threads, AMX bf16: {m['amx_bf16']}, CUDA: {m['cuda']}, load {m['load_avg_1min']}")
    if "matmul_peak" in fig:
        p = fig["matmul_peak"]
        print(f"dense fp32 matmul peak: {p['square_1024_gflops']} GFLOP/s (1024^3), "
              f"{p['layer_768x256x256_gflops']} GFLOP/s (768x256x256)")
    if "updates" in fig:
        print("SAC update:")
        _print_updates(fig["updates"])
    if "modular_net" in fig:
        _print_modular_net(fig["modular_net"])
    if "sb3" in fig:
        s = fig["sb3"]
        if "pearl_vs_sb3" in s:
            print(f"pearl vs SB3 ({s['sb3_config']}; params ours {s['pearl_params']}, SB3 "
                  f"{s['sb3_params']}): {s['pearl_vs_sb3']:.2f}x (target >= 1.0)")
        else:
            print(f"pearl vs SB3: {s['sb3']}")
    if "precision" in fig:
        _print_precision(fig["precision"])
    if "collection" in fig:
        c = fig["collection"]
        print(f"collection ({c['envs']} envs in lockstep): bare loop {c['bare_env_steps_per_s']} "
              f"steps/s, collector {c['cmrl_collection_env_steps_per_s']} steps/s, ratio "
              f"{c['collection_ratio']:.2f} (target >= 0.7)")
    for section, key in (("eval", "eval_vs_bare"), ("data", "data_vs_bare")):
        if section in fig:
            runs = {k: v for k, v in fig[section].items() if isinstance(v, dict)}
            print(f"{section} vs the bare loop, {fig[section]['workers']} worker processes each "
                  "(target >= 0.7): " + ", ".join(
                      f"{k} {v[key]:.2f}x ({v['env_steps_per_s'][section]:.0f} vs "
                      f"{v['env_steps_per_s']['bare']:.0f} steps/s)" for k, v in runs.items()))
    g = fig.get("gpu", {})
    if "skipped" in g:
        print(f"GPU: skipped ({g['skipped']})")
    elif g:
        p = g["matmul_peak"]
        print(f"GPU {g['device']}: dense fp32 matmul {p['square_1024_gflops']} GFLOP/s (1024^3), "
              f"{p['layer_768x256x256_gflops']} GFLOP/s (768x256x256)")
        _print_modular_net(g["modular_net"], "GPU ")
        print("GPU SAC update, eager and graphed (capture time apart):")
        _print_updates({**g.get("updates", {}), **g.get("deep_ml10", {})})
        if "precision" in g:
            _print_precision(g["precision"], "GPU ")
    if fig.get("ceilings"):
        print("ceilings (the ratio if every FLOP ran at the matmul peak): " + ", ".join(
            f"{k} {v}x" for k, v in fig["ceilings"].items()))
    print(f"peak RSS: {fig['peak_rss_mib']} MiB")
    print("ratios: " + ", ".join(f"{k} {v}" for k, v in fig["ratios"].items()))


def _print_updates(updates: dict) -> None:
    for key, f in updates.items():
        rates = ", ".join(f"{k} {v:.2f}" for k, v in f["updates_per_s"].items())
        gf = ", ".join(f"{k} {v}" for k, v in f["achieved_gflops"].items())
        ratios = "; ".join(f"{k}/eager {v:.2f}x" for k, v in f["vs_eager"].items() if k != "eager")
        extra = f"; compile {f['compile_s']:.1f} s" if f.get("compile_s") is not None else ""
        if f.get("capture_s") is not None:
            extra += f"; capture {f['capture_s']:.2f} s"
            if f.get("graphed_fell_back"):
                extra += " (capture FAILED: graphed ran the eager update)"
        print(f"  {key:18s} upd/s: {rates}; {ratios}; {f['gflop_per_update']} GFLOP/update, "
              f"achieved GFLOP/s: {gf}{extra}")


def _print_modular_net(n: dict, prefix: str = "") -> None:
    print(f"{prefix}modular net ({n['config']}), fwd+bwd/s: "
          + ", ".join(f"{k} {v:.1f}" for k, v in n["fwd_bwd_per_s"].items())
          + (f"; ours/mtrl {n['ours_vs_mtrl']:.2f}x (target >= 3x)" if "ours_vs_mtrl" in n
             else f"; {n.get('mtrl')}")
          + (f"; GFLOP per fwd+bwd ours {n['ours_gflop_per_step']}, mtrl {n['mtrl_gflop_per_step']}, "
             f"so per FLOP ours/mtrl {n['ours_vs_mtrl_per_flop']:.2f}x"
             if "ours_vs_mtrl_per_flop" in n else ""))


def _print_precision(pr: dict, prefix: str = "") -> None:
    print(f"{prefix}bf16 vs fp32 ({pr['config']}): {pr['bf16_vs_fp32']:.3f}x; --precision auto "
          f"picks {pr['auto_picks']}")
