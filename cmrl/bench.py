"""`python -m cmrl bench`: speed figures measured in one run on the machine at hand.

1. Collection: env steps/s of the trainer's collector (policy forward + context/prior z, all meta-train
   envs in lockstep) against a bare Meta-World loop over the same envs with random actions; ratio.
2. Updates: SAC transitions/s through one full update of our agents (twin Q + actor + temperature +
   Polyak, context encoder and KL included) against Stable-Baselines3 SAC with the same hidden width
   and the same total batch (installed for the benchmark only: requirements-dev.txt); ratio.
3. Peak resident memory of the process.
Targets (issue 2): collection >= 0.7x the bare loop; update >= 1.5x SB3 per transition.
"""

from __future__ import annotations

import platform
import resource
import time

import numpy as np
import torch

from .agent import MetaAgent
from .collector import Collector
from .config import RunConfig
from .envs import ACTION_DIM, OBS_DIM, TaskPool
from .sac import SACLearner
from .tasks import resolve_benchmark


def _timed(fn, seconds: float, warmup: int = 2) -> float:
    """Calls per second of fn over about `seconds`."""
    for _ in range(warmup):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench_collection(seconds: float, agent_kind: str = "cmrl") -> dict:
    cfg = RunConfig()
    cfg.train.agent = agent_kind
    cfg.benchmark.horizon = 100
    pool = TaskPool(resolve_benchmark(cfg.benchmark))
    tasks = pool.benchmark.train_tasks
    text_dim = 384 if agent_kind == "cmrl" else 0
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
    bare = _timed(bare_round, seconds, 1) * steps
    ours = _timed(collector.run_round, seconds, 1) * steps
    collector.close()
    return {"envs": len(envs), "bare_env_steps_per_s": round(bare), f"{agent_kind}_collection_env_steps_per_s":
            round(ours), "collection_ratio": round(ours / bare, 3)}


def bench_updates(seconds: float, width: int = 256, batch_per_task: int = 256) -> dict:
    tasks = ("drawer-open-v3", "drawer-close-v3", "window-open-v3")
    T = len(tasks)
    out: dict = {}
    for kind in ("cmrl", "pearl", "sm"):
        for precision in ("fp32", "bf16"):
            cfg = RunConfig()
            cfg.train.agent = kind
            cfg.sac.precision = precision
            cfg.sac.batch_size = batch_per_task
            text_dim = 384 if kind == "cmrl" else 0
            agent = MetaAgent(cfg, OBS_DIM, ACTION_DIM, text_dim, tasks)
            learner = SACLearner(agent)
            B = batch_per_task
            batch = {"obs": torch.randn(T, B, OBS_DIM), "actions": torch.rand(T, B, ACTION_DIM) * 2 - 1,
                     "rewards": torch.rand(T, B), "next_obs": torch.randn(T, B, OBS_DIM),
                     "dones": torch.zeros(T, B)}
            context = torch.randn(T, cfg.sac.context_size, 2 * OBS_DIM + ACTION_DIM + 1)
            goal = torch.randn(T, text_dim) if text_dim else None
            ids = torch.arange(T)
            ups = _timed(lambda: learner.update(batch, context, goal, ids), seconds)
            out[f"{kind}_{precision}_updates_per_s"] = round(ups, 2)
            out[f"{kind}_{precision}_transitions_per_s"] = round(ups * T * B)
    sb3 = _sb3_transitions_per_s(seconds, [width, width], T * batch_per_task)
    if sb3 is not None:
        out["sb3_sac_transitions_per_s"] = round(sb3)
        out["sb3_config"] = f"MlpPolicy net_arch [{width}, {width}], batch {T * batch_per_task}"
        for kind in ("cmrl", "pearl", "sm"):
            best = max(out[f"{kind}_fp32_transitions_per_s"], out[f"{kind}_bf16_transitions_per_s"])
            out[f"{kind}_vs_sb3_ratio"] = round(best / sb3, 3)
    else:
        out["sb3_sac_transitions_per_s"] = "stable-baselines3 not installed (pip install -r requirements-dev.txt)"
    return out


def _sb3_transitions_per_s(seconds: float, net_arch: list[int], batch: int) -> float | None:
    try:
        from stable_baselines3 import SAC
    except ImportError:
        return None
    from stable_baselines3.common.logger import configure

    # A real Meta-World env gives SB3 the spaces; the buffer is filled with synthetic transitions.
    pool = TaskPool(resolve_benchmark(RunConfig().benchmark))
    env = pool.make_env("drawer-open-v3").env
    model = SAC("MlpPolicy", env, batch_size=batch, policy_kwargs={"net_arch": net_arch},
                buffer_size=20000, learning_starts=0, device="cpu", verbose=0)
    rng = np.random.default_rng(0)
    for _ in range(4096):
        model.replay_buffer.add(rng.normal(size=(1, OBS_DIM)).astype(np.float32),
                                rng.normal(size=(1, OBS_DIM)).astype(np.float32),
                                rng.uniform(-1, 1, (1, ACTION_DIM)).astype(np.float32),
                                rng.random(1).astype(np.float32), np.zeros(1), [{}])
    model.set_logger(configure(None, []))
    ups = _timed(lambda: model.train(gradient_steps=1, batch_size=batch), seconds)
    return ups * batch


def run_bench(seconds: float = 8.0) -> dict:
    amx = False
    try:
        amx = "amx_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        pass
    figures = {"machine": {"cpu": platform.processor() or platform.machine(),
                           "torch_threads": torch.get_num_threads(), "amx_bf16": amx,
                           "torch": torch.__version__,
                           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    print("[bench] collection vs bare Meta-World loop ...", flush=True)
    figures["collection"] = bench_collection(seconds)
    print("[bench] SAC updates vs Stable-Baselines3 ...", flush=True)
    figures["updates"] = bench_updates(seconds)
    figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    _print(figures)
    return figures


def _print(fig: dict) -> None:
    m, c, u = fig["machine"], fig["collection"], fig["updates"]
    print(f"\nmachine: {m['cpu']}, torch {m['torch']}, {m['torch_threads']} threads, "
          f"AMX bf16: {m['amx_bf16']}, CUDA: {m['cuda']}")
    print(f"collection ({c['envs']} envs in lockstep): bare loop {c['bare_env_steps_per_s']} steps/s, "
          f"cmrl collector {c['cmrl_collection_env_steps_per_s']} steps/s, "
          f"ratio {c['collection_ratio']:.2f} (target >= 0.7)")
    print("SAC update, 3 tasks x 256 transitions:")
    for kind in ("cmrl", "pearl", "sm"):
        print(f"  {kind:5s} fp32 {u[f'{kind}_fp32_updates_per_s']:6.1f} upd/s "
              f"({u[f'{kind}_fp32_transitions_per_s']} tr/s), bf16 {u[f'{kind}_bf16_updates_per_s']:6.1f} "
              f"upd/s ({u[f'{kind}_bf16_transitions_per_s']} tr/s)"
              + (f", vs SB3 {u[f'{kind}_vs_sb3_ratio']:.2f}x" if f"{kind}_vs_sb3_ratio" in u else ""))
    print(f"  SB3 SAC ({u.get('sb3_config', '')}): {u['sb3_sac_transitions_per_s']} tr/s (target: ours >= 1.5x)")
    print(f"peak RSS: {fig['peak_rss_mib']} MiB")
