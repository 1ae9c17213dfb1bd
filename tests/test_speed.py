"""The update paths that stay (`speed_tuning.py`): `graphed` computes what `eager` computes, retired
paths load as eager, precision is resolved where it pays; and the bench's bookkeeping.

Same seed, same batch: the losses (metrics), the gradients each optimiser steps with and the weights
after several updates agree within float tolerance, for cmrl, pearl, sm and option-heavy variants.
No timings here: speed lives in `python -m cmrl bench`.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from cmrl.algo import cuda_graphs, speed_tuning
from cmrl.algo.agent import MetaAgent
from cmrl.config import ConfigError, RunConfig
from cmrl.algo.sac import SACLearner
from cmrl.algo.speed_tuning import resolve_precision
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config

TEXT_DIM = 24
TRANSITION_DIM = 2 * OBS_DIM + ACT_DIM + 1
T, B, N = 3, 12, 10

OPTION_HEAVY = {"net.routing_input": "cond", "net.cond_embed": "mlp",
                "net.goal_encoding": "verb_object", "net.text_routing": True,
                "net.obs_takes_context": False, "sac.context_dropout": 0.3,
                "sac.kl_prior": "text", "sac.z_contrastive": 1.0, "sac.bc_form": "td3bc"}
CONFIGS = {
    "cmrl": ("cmrl", {}),
    "pearl": ("pearl", {}),
    "sm": ("sm", {}),
    "cmrl-options": ("cmrl", OPTION_HEAVY),
    "sm-task-routing": ("sm", {"net.routing_input": "cond"}),
    "cmrl-bc-only": ("cmrl", {"sac.bc_only": True, "net.routing_input": "cond"}),
}


def _agent(name: str, layers: int = 3) -> MetaAgent:
    kind, fields = CONFIGS[name]
    cfg = tiny_config(kind, num_layers=layers, num_modules=3).updated(
        {"sac.bc_weight": 2.5, "sac.batch_size": B, "sac.context_size": N, **fields})
    torch.manual_seed(0)
    return MetaAgent(cfg, OBS_DIM, ACT_DIM, TEXT_DIM if kind == "cmrl" else 0, ML4_TRAIN)


def _inputs(agent: MetaAgent, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    batch = {"obs": torch.randn(T, B, OBS_DIM, generator=g),
             "actions": torch.rand(T, B, ACT_DIM, generator=g) * 2 - 1,
             "rewards": torch.rand(T, B, generator=g),
             "next_obs": torch.randn(T, B, OBS_DIM, generator=g),
             "dones": torch.zeros(T, B)}
    context = torch.randn(T, N, TRANSITION_DIM, generator=g) if agent.uses_context else None
    goal = torch.randn(T, agent.goal_dim, generator=g) if agent.uses_text else None
    mask = None
    if agent.config.sac.context_dropout > 0:
        mask = torch.arange(N)[None, :] < torch.tensor([[0], [4], [N]])  # empty, partial, full
    return batch, context, goal, mask


def _run(name: str, impl: str, updates: int = 2, layers: int = 3, device: str = "cpu",
         graph_capture: bool | None = None) -> dict:
    """`updates` updates from the same start; the metrics of each, the gradients every optimiser
    stepped with in the first, and the final weights."""
    agent = _agent(name, layers).to(device)
    learner = SACLearner(agent, update_impl=impl, graph_capture=graph_capture)
    grads: dict[str, list] = {}

    def spy(opt, key):
        step = opt.step

        def wrapped(*a, **k):
            if key not in grads:
                grads[key] = [None if p.grad is None else p.grad.detach().clone()
                              for grp in opt.param_groups for p in grp["params"]]
            return step(*a, **k)
        opt.step = wrapped

    for opt, key in ((learner.critic_opt, "critic"), (learner.actor_opt, "actor"),
                     (learner.alpha_opt, "alpha")):
        spy(opt, key)
    torch.manual_seed(1)
    metrics = []
    for i in range(updates):
        batch, context, goal, mask = _on(device, *_inputs(agent, seed=10 + i))
        metrics.append(learner.update(batch, context, goal, torch.arange(T, device=device),
                                      context_mask=mask))
    return {"metrics": metrics, "grads": grads, "learner": learner,
            "weights": {k: v.detach().clone() for k, v in agent.state_dict().items()}}


def _on(device: str, batch, context, goal, mask) -> tuple:
    move = lambda x: None if x is None else x.to(device)  # noqa: E731
    return {k: v.to(device) for k, v in batch.items()}, move(context), move(goal), move(mask)


def _assert_same(ref: dict, other: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for m_ref, m_other in zip(ref["metrics"], other["metrics"]):
        assert set(m_ref) == set(m_other)
        for k in m_ref:
            assert m_other[k] == pytest.approx(m_ref[k], rel=rtol, abs=atol), k
    assert set(ref["grads"]) == set(other["grads"]) == {"critic", "actor", "alpha"}
    for key in ref["grads"]:
        for g_ref, g_other in zip(ref["grads"][key], other["grads"][key]):
            assert (g_ref is None) == (g_other is None)
            if g_ref is not None:
                torch.testing.assert_close(g_other, g_ref, rtol=rtol, atol=atol)
    for k, w in ref["weights"].items():
        torch.testing.assert_close(other["weights"][k], w, rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("name", ["cmrl", "sm", "cmrl-options", "sm-task-routing"])
def test_graphed_plumbing_matches_eager(name):
    """The `graphed` path without capture (CPU): warm-up updates, then static input tensors that
    every update is copied into, metrics packed and copied out; same updates as eager."""
    updates = cuda_graphs.WARMUP + 3
    graphed = _run(name, "graphed", updates=updates, graph_capture=False)
    learner = graphed["learner"]
    assert learner.impl == "graphed" and len(learner._graphed.graphs) == 1
    _assert_same(_run(name, "eager", updates=updates), graphed)


def test_graphed_metrics_outlive_the_next_update_and_signatures_get_their_own_graph():
    agent = _agent("cmrl")
    learner = SACLearner(agent, update_impl="graphed", graph_capture=False)
    batch, context, goal, _ = _inputs(agent, 0)
    for _ in range(cuda_graphs.WARMUP):
        learner.update(batch, context, goal, torch.arange(T), read_metrics=False)
    first = learner.update(batch, context, goal, torch.arange(T), read_metrics=False)
    kept = {k: float(v) for k, v in first.items()}
    other, _, _, _ = _inputs(agent, 1)
    learner.update(other, context, goal, torch.arange(T), read_metrics=False)
    assert {k: float(v) for k, v in first.items()} == kept
    # the critic warm-up (no actor step) is another signature: it warms up and captures anew
    for _ in range(cuda_graphs.WARMUP + 1):
        m = learner.update(batch, context, goal, torch.arange(T), update_actor=False)
    assert "actor_loss" not in m and len(learner._graphed.graphs) == 2
    learner.load_state_dict(learner.state_dict())  # replaced optimiser state: graphs dropped
    assert not learner._graphed.graphs


def test_graphed_on_cpu_warns_and_runs_eager():
    with pytest.warns(RuntimeWarning, match="graphed needs a CUDA device"):
        learner = SACLearner(_agent("pearl"), update_impl="graphed")
    assert learner.impl == "eager" and learner.capture_seconds is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", ["cmrl", "pearl", "sm", "cmrl-options"])
def test_cuda_graphed_update_matches_eager(name):
    """Captured and replayed on the GPU: the same updates as eager (random draws included: the
    graph's philox offsets follow the generator as uncaptured kernels do). Larger tolerances than
    on CPU: cuBLAS may pick other kernels inside a graph, and Adam is fused there."""
    updates = cuda_graphs.WARMUP + 4
    eager = _run(name, "eager", updates=updates, device="cuda")
    graphed = _run(name, "graphed", updates=updates, device="cuda")
    learner = graphed["learner"]
    assert learner.impl == "graphed" and learner.capture_seconds > 0
    assert all(g.graph is not None for g in learner._graphed.graphs.values())
    _assert_same(eager, graphed, rtol=1e-3, atol=1e-4)


def test_update_leaves_metrics_unread_only_when_asked():
    agent = _agent("cmrl")
    batch, context, goal, _ = _inputs(agent, 0)
    learner = SACLearner(agent, update_impl="eager")
    lazy = learner.update(batch, context, goal, torch.arange(T), read_metrics=False)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in lazy.values())
    read = learner.update(batch, context, goal, torch.arange(T))
    assert all(isinstance(v, float) and math.isfinite(v) for v in read.values())


@pytest.mark.parametrize("src,dst", [("eager", "graphed"), ("graphed", "eager")])
def test_optimizer_state_moves_between_paths(src, dst):
    """A checkpoint written by one path resumes on the other, each with its own Adam flags."""
    a = _run("sm", src, updates=1, graph_capture=False)["learner"]
    b = SACLearner(copy.deepcopy(a.agent), update_impl=dst, graph_capture=False)
    b.load_state_dict(a.state_dict())
    for opt in (b.critic_opt, b.actor_opt, b.alpha_opt):
        assert all(bool(g["fused"]) == (dst == "graphed") for g in opt.param_groups)
    batch, _, _, _ = _inputs(b.agent, 3)
    m = b.update(batch, None, None, torch.arange(T))
    assert all(math.isfinite(v) for v in m.values()) and b.updates == 2


def test_retired_update_paths_load_as_eager():
    """Configs and checkpoints written when `fast` (the CPU default) and `compiled` existed still
    load, as the path that runs the same losses now, with a warning saying so."""
    for retired in ("fast", "compiled"):
        data = tiny_config("pearl").to_dict()
        data["sac"]["update_impl"] = retired
        with pytest.warns(UserWarning, match=f"update_impl='{retired}' is retired"):
            cfg = RunConfig.from_dict(data)
        assert cfg.sac.update_impl == "eager"
        assert SACLearner(MetaAgent(cfg, OBS_DIM, ACT_DIM, 0, ML4_TRAIN)).impl == "eager"


# -- precision ---------------------------------------------------------------------------------------
def test_auto_precision_picks_bf16_only_where_it_pays(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(speed_tuning, "has_amx_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(speed_tuning, "has_amx_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"


def test_bf16_where_it_is_slower_warns_with_the_measured_cost(monkeypatch):
    monkeypatch.setattr(speed_tuning, "bf16_matmul_cost", lambda device: 20.0)
    with pytest.warns(RuntimeWarning, match=r"bf16 matmul measured 20.0x"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(speed_tuning, "bf16_matmul_cost", lambda device: 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_bf16_cost_probe_measures_something():
    cost = speed_tuning.bf16_matmul_cost(torch.device("cpu"), size=(64, 64, 64), seconds=0.01)
    assert math.isfinite(cost) and cost > 0


def test_update_impl_and_precision_are_validated():
    with pytest.raises(ConfigError, match="update_impl"):
        tiny_config("cmrl").updated({"sac.update_impl": "turbo"})
    assert tiny_config("cmrl").updated({"sac.precision": "auto"}).sac.precision == "auto"
    with pytest.raises(ValueError, match="update_impl must be one of auto, eager, graphed"):
        speed_tuning.resolve_update_impl("fast", torch.device("cpu"))


def test_auto_update_path_is_eager_on_cpu_and_graphed_on_cuda():
    assert speed_tuning.resolve_update_impl("auto", torch.device("cpu")) == "eager"
    assert speed_tuning.resolve_update_impl("auto", torch.device("cuda")) == "graphed"


# -- the bench's bookkeeping (no timings) --------------------------------------------------------
DOCS = Path(__file__).parent.parent / "docs"


def test_bench_summary_reads_the_recorded_gpu_figures(capsys):
    """The H100 figures in docs/ (a real `bench --sections gpu` run, from when `fast` and
    `compiled` existed) still give their flat ratios and the printed table."""
    from cmrl.experiments.bench import _print, _ratios

    fig = json.loads((DOCS / "bench_gpu_h100.json").read_text())
    ratios = _ratios(fig)
    cmrl = fig["gpu"]["updates"]["cmrl_3x256"]
    assert ratios["gpu_cmrl_3x256_compiled_vs_eager"] == cmrl["vs_eager"]["compiled"]
    assert ratios["gpu_cmrl_10x256_deep128_fast_vs_eager"] == \
        fig["gpu"]["deep_ml10"]["cmrl_10x256_deep128"]["vs_eager"]["fast"]
    assert ratios["gpu_modular_net_vs_mtrl"] == fig["gpu"]["modular_net"]["ours_vs_mtrl"]
    _print(fig)
    out = capsys.readouterr().out
    assert "H100" in out and "compiled/eager 1.42x" in out and "compile 37.4 s" in out


def test_bench_summary_reads_the_recorded_graphed_gpu_figures(capsys):
    """The H100 figures of the `graphed` path (docs/bench_gpu_h100_graphed.json): graphed/eager
    in the flat ratios and the table, its capture time apart."""
    from cmrl.experiments.bench import _print, _ratios

    fig = json.loads((DOCS / "bench_gpu_h100_graphed.json").read_text())
    ratios = _ratios(fig)
    for key, f in {**fig["gpu"]["updates"], **fig["gpu"]["deep_ml10"]}.items():
        assert ratios[f"gpu_{key}_graphed_vs_eager"] == f["vs_eager"]["graphed"]
        assert not f["graphed_fell_back"] and f"gpu_{key}_compiled_vs_eager" not in ratios
    _print(fig)
    out = capsys.readouterr().out
    assert "graphed/eager 9.11x" in out and "capture 0.05 s" in out and "FAILED" not in out


def test_cpu_update_bench_times_the_one_cpu_path():
    from cmrl.experiments.bench import _ratios, bench_update_paths

    out = bench_update_paths(0.2, torch.device("cpu"), kinds=("pearl",), batches=(8,))
    f = out["pearl_3x8"]
    assert set(f["updates_per_s"]) == {"eager"} and f["updates_per_s"]["eager"] > 0
    assert f["gflop_per_update"] > 0 and f["achieved_gflops"]["eager"] > 0
    assert not any(k.startswith("pearl") for k in _ratios({"updates": out}))  # nothing to compare


def test_bench_sections_are_checked_and_saved_as_they_land(tmp_path, capsys):
    from cmrl.cli import main

    assert main(["bench", "--sections", "updates,warp"]) == 2
    assert "unknown bench section(s) warp" in capsys.readouterr().err
    out = tmp_path / "b.json"
    assert main(["bench", "--sections", "gpu", "--seconds", "0.1", "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["sections"] == ["gpu"] and "updates" not in fig
    if not torch.cuda.is_available():
        assert fig["gpu"] == {"skipped": "no CUDA device"} and fig["ratios"] == {}


def test_eval_and_data_ratios_give_the_worst_setup_and_each_one(capsys):
    from cmrl.experiments.bench import _print, _ratios, whole_runs

    fig = {"machine": {"cpu": "x", "cpu_count": 2, "torch": "t", "torch_threads": 2,
                       "amx_bf16": False, "cuda": None, "load_avg_1min": 0.0},
           "peak_rss_mib": 1.0,
           "eval": {"workers": 2, "variations_per_task": 10,
                    "ml1_reach-v3_cmrl": {"env_steps_per_s": {"bare": 100.0, "eval": 80.0},
                                          "eval_vs_bare": 0.8},
                    "ml1_reach-v3_pearl": {"env_steps_per_s": {"bare": 100.0, "eval": 90.0},
                                           "eval_vs_bare": 0.9}},
           "data": {"workers": 2, "ml10": {"env_steps_per_s": {"bare": 10.0, "data": 7.5},
                                           "data_vs_bare": 0.75, "episodes_per_task": 11}}}
    fig["ratios"] = r = _ratios(fig)
    assert r["eval_vs_bare"] == 0.8 and r["eval_vs_bare_ml1_reach-v3_pearl"] == 0.9
    assert r["data_vs_bare"] == r["data_vs_bare_ml10"] == 0.75
    _print(fig)
    assert "eval vs the bare loop, 2 worker processes" in capsys.readouterr().out
    runs = iter([(100, 1.0), (100, 2.0)] * 4)  # a: 100 steps/s, b: 50
    w = whole_runs({"a": lambda: next(runs), "b": lambda: next(runs)}, rounds=3)
    assert w["per_s"] == {"a": 100.0, "b": 50.0} and w["ratio"]["b"] == 0.5


def test_bench_ceilings_put_each_target_beside_what_the_machine_allows():
    """A ceiling is the ratio a path would reach if all its counted FLOPs ran at the matmul peak
    measured in the same run."""
    from cmrl.experiments.bench import ceilings

    fig = json.loads((DOCS / "bench_cpu_amd_epyc_2t.json").read_text())
    c = ceilings(fig)
    top = max(fig["matmul_peak"].values())
    for key, f in fig["updates"].items():
        assert c[f"{key}_vs_eager"] == round(top / f["achieved_gflops"]["eager"], 2)
    assert c["pearl_3x128_vs_eager"] < 2.1 < c["cmrl_3x256_vs_eager"]
    # the network's ceiling needs its FLOPs, which newer bench runs record
    assert "modular_net_vs_mtrl" not in c
    fig["modular_net"]["ours_gflop_per_step"] = 0.2
    c = ceilings(fig)
    assert c["modular_net_vs_mtrl"] == round(top / 0.2 / fig["modular_net"]["fwd_bwd_per_s"]["mtrl"], 2)
    assert ceilings({"machine": {}}) == {}


def test_network_bench_puts_ours_beside_mtrl_per_step_and_per_flop():
    """Ours and mtrl's Soft Modularization net (when installed) timed side by side; the nets differ
    in size, so the FLOPs of each are counted and the per-FLOP ratio is given too."""
    from cmrl.experiments.bench import _import_mtrl, _ratios, bench_modular_net

    fig = bench_modular_net(0.3, torch.device("cpu"), batch=64)
    assert fig["fwd_bwd_per_s"]["ours"] > 0 and fig["ours_gflop_per_step"] > 0
    if not isinstance(_import_mtrl(), tuple):
        pytest.skip("mtrl is not installed (requirements-dev.txt)")
    assert 0 < fig["mtrl_gflop_per_step"] < fig["ours_gflop_per_step"]
    assert fig["ours_vs_mtrl_per_flop"] == round(
        fig["ours_vs_mtrl"] * fig["ours_gflop_per_step"] / fig["mtrl_gflop_per_step"], 3)
    assert _ratios({"modular_net": fig})["modular_net_vs_mtrl_per_flop"] == fig["ours_vs_mtrl_per_flop"]


def test_matmul_share_script_measures_an_update():
    """scripts/matmul_share.py on a tiny pearl update: shares are fractions, the bound follows."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "matmul_share.py"
    spec = importlib.util.spec_from_file_location("matmul_share", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.measure("pearl", "eager", batch=8, seconds=0.05, peak=100.0)
    assert 0 < r["matmul_share"] < 1
    assert r["gflop_per_update"] > 0 and r["matmul_gflops"] > 0
    assert r["bound_same_flops"] == pytest.approx(1 / (r["matmul_share"] * r["matmul_gflops"] / 100.0))


def test_acting_runs_on_one_thread_and_gives_the_others_back():
    seen = []
    acting = speed_tuning.one_thread(lambda: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        acting()
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
