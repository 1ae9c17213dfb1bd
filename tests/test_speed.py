"""The fast and compiled SAC updates (issue 13) compute what the eager reference computes.

Same seed, same batch: the losses (metrics), the gradients each optimiser steps with and the weights
after two updates agree within float tolerance, for cmrl, pearl, sm and option-heavy variants. No
timings here: speed lives in `python -m cmrl bench`.
"""

from __future__ import annotations

import copy
import math
import os
import warnings

import pytest
import torch

from cmrl.nets import modular_net
from cmrl.algo import cuda_graphs, sac as sac_module
from cmrl.algo.agent import MetaAgent
from cmrl.config import ConfigError, NetworkConfig
from cmrl.nets.modular_net import SoftModularNet, grouped_rows, reference_kernels
from cmrl.algo.sac import SACLearner, clip_grad_norm_foreach, resolve_precision
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


def _run(name: str, impl: str, updates: int = 2, backend=None, layers: int = 3,
         device: str = "cpu", graph_capture: bool | None = None) -> dict:
    """`updates` updates from the same start; the metrics of each, the gradients every optimiser
    stepped with in the first, and the final weights."""
    agent = _agent(name, layers).to(device)
    learner = SACLearner(agent, update_impl=impl, graph_capture=graph_capture)
    if backend is not None:
        learner._compile_backend = backend
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


@pytest.fixture
def fast_kernels_always(monkeypatch):
    """The fast soft-modular kernels run from FAST_KERNEL_ROWS rows up (per thread with several);
    the tests' batches are smaller, so lower the bar to exercise them."""
    monkeypatch.setattr(modular_net, "FAST_KERNEL_ROWS", 0)
    monkeypatch.setattr(modular_net, "FAST_KERNEL_ROWS_PER_THREAD", 0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_update_matches_eager(name, fast_kernels_always):
    _assert_same(_run(name, "eager"), _run(name, "fast"))


def test_fast_kernels_need_enough_rows_per_cpu_thread(monkeypatch):
    """With one CPU thread (and on CUDA) the fast kernels run from FAST_KERNEL_ROWS rows; with
    several CPU threads from FAST_KERNEL_ROWS_PER_THREAD rows per thread (the reference ones split
    across threads better). And a network really switches: same outputs either way, different ops."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    bar, per_thread = modular_net.FAST_KERNEL_ROWS, modular_net.FAST_KERNEL_ROWS_PER_THREAD
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not modular_net.fast_kernels_pay(2 * per_thread - 1, cpu)
    assert not modular_net.fast_kernels_pay(768, cpu)  # 3 x 256 at 2 threads: reference
    assert modular_net.fast_kernels_pay(2 * per_thread, cpu)
    assert modular_net.fast_kernels_pay(1152, cpu)  # 3 x 384 at 2 threads: fast
    assert modular_net.fast_kernels_pay(bar, cuda) and not modular_net.fast_kernels_pay(bar - 1, cuda)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert modular_net.fast_kernels_pay(bar, cpu) and not modular_net.fast_kernels_pay(bar - 1, cpu)

    torch.manual_seed(0)
    net = SoftModularNet(OBS_DIM, 5, 4, NetworkConfig(), ensemble=2)
    x, c = torch.randn(1, bar, OBS_DIM), torch.randn(1, bar, 5)
    called = []
    monkeypatch.setattr(net, "_forward_reference",
                        lambda *a, _f=net._forward_reference: called.append(1) or _f(*a))
    fast_out, _ = net(x, c)  # one thread: fast kernels
    assert not called
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    ref_out, _ = net(x, c)  # two threads: reference kernels
    assert called
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["cmrl", "sm-task-routing"])
def test_fast_update_on_small_batches_matches_eager(name):
    """Below FAST_KERNEL_ROWS the fast path keeps the reference kernels (and groups task routing)."""
    _assert_same(_run(name, "eager"), _run(name, "fast"))


@pytest.mark.parametrize("name", ["pearl", "cmrl-options"])
def test_compiled_update_matches_eager(name):
    """The compiled path through dynamo and AOTAutograd (backend aot_eager: the graphs torch.compile
    builds, run by eager kernels, so the test needs no C++ compiler), dry run included. (At these
    batch sizes the networks trace their reference kernels: fewer ops to trace; the fast kernels
    have their own tests above.)"""
    ref = _run(name, "eager", layers=2)
    compiled = _run(name, "compiled", backend="aot_eager", layers=2)
    assert compiled["learner"].impl == "compiled" and compiled["learner"].compile_seconds > 0
    _assert_same(ref, compiled)


@pytest.mark.skipif(not os.environ.get("CMRL_TEST_INDUCTOR"),
                    reason="inductor builds C++ kernels: ~3 min on a 2-core CPU the first time; "
                           "set CMRL_TEST_INDUCTOR=1 to run it")
def test_inductor_compiled_update_matches_eager():
    """One agent through the real inductor backend (C++ kernels, cached after the first build):
    same losses and gradients as eager, random draws included (`fallback_random`)."""
    ref = _run("pearl", "eager")
    compiled = _run("pearl", "compiled")
    if compiled["learner"].impl != "compiled":
        pytest.skip("torch.compile is not available here (it fell back, with a warning)")
    _assert_same(ref, compiled, rtol=1e-3, atol=1e-4)


def test_compile_failure_falls_back_to_fast_with_a_warning():
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    ref = _run("cmrl", "eager", layers=2)
    with pytest.warns(RuntimeWarning, match="torch.compile of the SAC update failed"):
        fell_back = _run("cmrl", "compiled", backend=broken, layers=2)
    assert fell_back["learner"].impl == "fast" and fell_back["learner"].compile_seconds is None
    _assert_same(ref, fell_back)  # the dry run left no trace: random state, gradients, weights


@pytest.mark.parametrize("name", ["cmrl", "sm", "cmrl-options"])
def test_graphed_plumbing_matches_eager(name, fast_kernels_always):
    """The `graphed` path without capture (CPU): warm-up updates, then static input tensors that
    every update is copied into, metrics packed and copied out; same updates as the reference."""
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


def test_graphed_on_cpu_warns_and_runs_fast():
    with pytest.warns(RuntimeWarning, match="graphed needs a CUDA device"):
        learner = SACLearner(_agent("pearl"), update_impl="graphed")
    assert learner.impl == "fast" and learner.capture_seconds is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", ["cmrl", "pearl", "sm", "cmrl-options"])
def test_cuda_graphed_update_matches_fast(name):
    """Captured and replayed on the GPU: the same updates as `fast` (random draws included: the
    graph's philox offsets follow the generator as uncaptured kernels do). Larger tolerances than
    on CPU: cuBLAS may pick other kernels inside a graph."""
    updates = cuda_graphs.WARMUP + 4
    fast = _run(name, "fast", updates=updates, device="cuda")
    graphed = _run(name, "graphed", updates=updates, device="cuda")
    learner = graphed["learner"]
    assert learner.impl == "graphed" and learner.capture_seconds > 0
    assert all(g.graph is not None for g in learner._graphed.graphs.values())
    _assert_same(fast, graphed, rtol=1e-3, atol=1e-4)


def test_update_leaves_metrics_unread_only_when_asked():
    agent = _agent("cmrl")
    batch, context, goal, _ = _inputs(agent, 0)
    fast = SACLearner(agent, update_impl="fast")
    lazy = fast.update(batch, context, goal, torch.arange(T), read_metrics=False)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in lazy.values())
    read = fast.update(batch, context, goal, torch.arange(T))
    assert all(isinstance(v, float) and math.isfinite(v) for v in read.values())
    eager = SACLearner(_agent("cmrl"), update_impl="eager")
    assert all(isinstance(v, float) for v in
               eager.update(batch, context, goal, torch.arange(T), read_metrics=False).values())


@pytest.mark.parametrize("src,dst", [("eager", "fast"), ("fast", "eager")])
def test_optimizer_state_moves_between_paths(src, dst):
    """A checkpoint written by one path resumes on the other, each with its own Adam kernel."""
    a = _run("sm", src, updates=1)["learner"]
    b = SACLearner(copy.deepcopy(a.agent), update_impl=dst)
    b.load_state_dict(a.state_dict())
    fused = dst != "eager"
    for opt in (b.critic_opt, b.actor_opt, b.alpha_opt):
        assert all(bool(g["fused"]) == fused for g in opt.param_groups)
    batch, _, _, _ = _inputs(b.agent, 3)
    m = b.update(batch, None, None, torch.arange(T))
    assert all(math.isfinite(v) for v in m.values()) and b.updates == 2


def test_foreach_clip_matches_torch():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=g) * 4, torch.randn(7, generator=g)]
    ours = [x.clone() for x in grads]
    params = [torch.zeros_like(x, requires_grad=True) for x in grads]
    for p, x in zip(params, grads):
        p.grad = x.clone()
    total = torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.testing.assert_close(clip_grad_norm_foreach(ours, 1.0), total)
    for p, x in zip(params, ours):
        torch.testing.assert_close(x, p.grad)


# -- the soft-modular kernels -----------------------------------------------------------------------
@pytest.mark.parametrize("routing_input", ["obs_x_cond", "cond"])
@pytest.mark.parametrize("ensemble", [1, 2])
@pytest.mark.parametrize("split", [False, True])
def test_fast_kernels_and_grouped_routing_match_the_reference(routing_input, ensemble, split,
                                                              fast_kernels_always):
    torch.manual_seed(0)
    cfg = NetworkConfig(num_layers=4, num_modules=3, module_width=8, embed_dim=8, gating_hidden=8,
                        routing_input=routing_input, cond_embed="mlp")
    net = SoftModularNet(10, 6, 3, cfg, ensemble=ensemble,
                         cond_parts=([0, 1, 2], [0, 3, 4, 5]) if split else None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4 * 5, 10, generator=g)
    z = torch.randn(4, 6, generator=g)
    weight = torch.randn(ensemble, 4 * 5, 3, 3, generator=g)

    def run(reference: bool, groups: int | None):
        reference_kernels(net, reference)
        net.zero_grad(set_to_none=True)
        zz = z.clone().requires_grad_(True)
        cond = zz.repeat_interleave(5, dim=0).unsqueeze(0)
        with grouped_rows(net, groups) if groups else torch.enable_grad():
            out, routing = net(x, cond)
        loss = out.pow(2).sum() + (routing.layers[1] * weight).sum() + routing.final.sum()
        loss.backward()
        return [out, *routing.layers, routing.final, zz.grad] + [p.grad for p in net.parameters()]

    ref = run(True, None)
    for got in (run(False, None), run(False, 4)):
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert net.row_groups is None  # grouped_rows restores the networks afterwards


# -- precision ---------------------------------------------------------------------------------------
def test_auto_precision_picks_bf16_only_where_it_pays(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(sac_module, "has_amx_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(sac_module, "has_amx_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"


def test_bf16_where_it_is_slower_warns_with_the_measured_cost(monkeypatch):
    monkeypatch.setattr(sac_module, "bf16_matmul_cost", lambda device: 20.0)
    with pytest.warns(RuntimeWarning, match=r"bf16 matmul measured 20.0x"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(sac_module, "bf16_matmul_cost", lambda device: 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_bf16_cost_probe_measures_something():
    cost = sac_module.bf16_matmul_cost(torch.device("cpu"), size=(64, 64, 64), seconds=0.01)
    assert math.isfinite(cost) and cost > 0


def test_update_impl_and_precision_are_validated():
    with pytest.raises(ConfigError, match="update_impl"):
        tiny_config("cmrl").updated({"sac.update_impl": "turbo"})
    assert tiny_config("cmrl").updated({"sac.precision": "auto"}).sac.precision == "auto"


def test_auto_update_path_is_fast_on_cpu_and_graphed_on_cuda():
    """`auto` picks only paths whose learning was shown equal to eager on that device: on CUDA
    the compiled path is faster too but its one whole H100 run learned worse (README, Speed)."""
    assert sac_module.resolve_update_impl("auto", torch.device("cpu")) == "fast"
    assert sac_module.resolve_update_impl("auto", torch.device("cuda")) == "graphed"
    assert sac_module.resolve_update_impl("compiled", torch.device("cuda")) == "compiled"


# -- the bench's bookkeeping (no timings) --------------------------------------------------------
def test_bench_summary_reads_the_recorded_gpu_figures(capsys):
    """The H100 figures in docs/ (a real `bench --sections gpu` run) give the flat GPU ratios
    and the printed table, with compiled/eager beside fast/eager and the compile time apart."""
    import json
    from pathlib import Path

    from cmrl.experiments.bench import _print, _ratios

    fig = json.loads((Path(__file__).parent.parent / "docs" / "bench_gpu_h100.json").read_text())
    ratios = _ratios(fig)
    cmrl = fig["gpu"]["updates"]["cmrl_3x256"]
    assert ratios["gpu_cmrl_3x256_compiled_vs_eager"] == cmrl["vs_eager"]["compiled"]
    assert ratios["gpu_cmrl_10x256_deep128_fast_vs_eager"] == \
        fig["gpu"]["deep_ml10"]["cmrl_10x256_deep128"]["vs_eager"]["fast"]
    assert ratios["gpu_modular_net_vs_mtrl"] == fig["gpu"]["modular_net"]["ours_vs_mtrl"]
    assert "cmrl_update_vs_eager" not in ratios  # the CPU sections were not run
    _print(fig)
    out = capsys.readouterr().out
    assert "H100" in out and "compiled/eager 1.42x" in out and "compile 37.4 s" in out


def test_bench_summary_reads_the_recorded_graphed_gpu_figures(capsys):
    """The H100 figures of the `graphed` path (docs/bench_gpu_h100_graphed.json): graphed/eager
    in the flat ratios and the table, its capture time apart, no compiled column."""
    import json
    from pathlib import Path

    from cmrl.experiments.bench import _print, _ratios

    path = Path(__file__).parent.parent / "docs" / "bench_gpu_h100_graphed.json"
    fig = json.loads(path.read_text())
    ratios = _ratios(fig)
    for key, f in {**fig["gpu"]["updates"], **fig["gpu"]["deep_ml10"]}.items():
        assert ratios[f"gpu_{key}_graphed_vs_eager"] == f["vs_eager"]["graphed"]
        assert not f["graphed_fell_back"] and f"gpu_{key}_compiled_vs_eager" not in ratios
    _print(fig)
    out = capsys.readouterr().out
    assert "graphed/eager 9.11x" in out and "capture 0.05 s" in out and "FAILED" not in out


def test_fixed_cost_share_is_the_part_of_an_update_that_does_not_shrink_with_the_batch():
    from cmrl.experiments.bench import _update_fixture, ceilings, fixed_cost_share

    _, step = _update_fixture("pearl", 256, torch.device("cpu"), "fast")
    share = fixed_cost_share("pearl", 3, None, step, seconds=0.6)
    assert 0.0 < share < 1.0  # 3 x 8 transitions cost less than 3 x 256, and not nothing
    fig = {"matmul_peak": {"square_1024_gflops": 100.0},
           "updates": {"cmrl_3x256": {"achieved_gflops": {"eager": 25.0},
                                      "fast_vs_eager_without_fixed_cost": 1.8}}}
    assert ceilings(fig) == {"cmrl_3x256_vs_eager": 4.0, "cmrl_3x256_vs_eager_same_kernels": 1.8}


def test_bench_sections_are_checked_and_saved_as_they_land(tmp_path, capsys):
    from cmrl.cli import main

    assert main(["bench", "--sections", "updates,warp"]) == 2
    assert "unknown bench section(s) warp" in capsys.readouterr().err
    out = tmp_path / "b.json"
    assert main(["bench", "--sections", "gpu", "--seconds", "0.1", "--json", str(out)]) == 0
    import json

    fig = json.loads(out.read_text())
    assert fig["sections"] == ["gpu"] and "updates" not in fig
    if not torch.cuda.is_available():
        assert fig["gpu"] == {"skipped": "no CUDA device"} and fig["ratios"] == {}


def test_bench_ceilings_put_each_target_beside_what_the_machine_allows():
    """A ceiling is the ratio a path would reach if all its counted FLOPs ran at the matmul peak
    measured in the same run: from the recorded 2-core figures, pearl's eager update already runs
    at about half that peak, so its 2x target sits at the ceiling."""
    import json
    from pathlib import Path

    from cmrl.experiments.bench import ceilings

    fig = json.loads((Path(__file__).parent.parent / "docs" / "bench_cpu_amd_epyc_2t.json").read_text())
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


def test_fast_kernel_rule_script_compares_and_restores_the_rule():
    """scripts/fast_kernel_rule.py: both kernels timed in whole updates, the rule's pick reported,
    and the library's rule put back."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "fast_kernel_rule.py"
    spec = importlib.util.spec_from_file_location("fast_kernel_rule", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rule = modular_net.fast_kernels_pay
    r = mod.compare("sm", 8, seconds=0.2, rounds=2)
    assert set(r["per_s"]) == {"fast_kernels", "reference_kernels"}
    assert all(v > 0 for v in r["per_s"].values()) and r["reference_over_fast"] > 0
    assert r["rule_picks"] == "reference"  # 24 rows
    assert modular_net.fast_kernels_pay is rule


def test_cpu_bench_times_each_update_path_in_a_process_of_its_own():
    """The CPU bench's fast/eager is what a user sees: eager in a process that never touched the
    allocator (glibc's adaptive thresholds, as `train --set sac.update_impl=eager` runs it), fast
    with its own allocator setting, and eager under fast's setting beside them, each in its own
    process, none of them this one."""
    from cmrl.experiments.bench import _print_updates, _ratios, bench_update_paths

    out = bench_update_paths(0.3, torch.device("cpu"), kinds=("pearl",), batches=(8,))
    f = out["pearl_3x8"]
    assert set(f["updates_per_s"]) == {"eager", "eager_kept_memory", "fast"}
    assert all(v > 0 for v in f["updates_per_s"].values())
    assert f["allocator_kept"] == {"eager": None, "eager_kept_memory": True, "fast": True}
    pids = set(f["processes"].values())
    assert len(pids) == 3 and os.getpid() not in pids
    assert set(f["page_faults_per_update"]) == set(f["updates_per_s"])
    assert f["fixed_cost_share"] > 0 and f["fast_vs_eager_same_allocator"] > 0
    ratios = _ratios({"updates": {"pearl_3x256": f}})
    assert ratios["pearl_update_vs_eager"] == f["vs_eager"]["fast"]
    assert ratios["pearl_update_vs_eager_same_allocator"] == f["fast_vs_eager_same_allocator"]


def test_bench_worker_reports_bad_commands_and_keeps_serving():
    """A failed command comes back as a clear error in the parent, and the worker goes on."""
    from cmrl.experiments.bench import PathProcess

    with PathProcess(threads=1) as w:
        assert w.info["threads"] == 1 and w.info["pid"] != os.getpid()
        with pytest.raises(RuntimeError, match="setup: .*nope"):
            w.ask("setup", kind="nope", batch=8, num_tasks=3, impl="eager")
        with pytest.raises(RuntimeError, match="unknown command 'warp'"):
            w.ask("warp")
        s = w.ask("setup", kind="pearl", batch=8, num_tasks=3, impl="eager")
        assert s["impl"] == "eager" and s["allocator_kept"] is None
        assert w.ask("window", seconds=0.05)["per_s"] > 0
    assert w.proc.poll() == 0


def test_network_bench_puts_ours_beside_mtrl_per_step_and_per_flop():
    """Ours and mtrl's Soft Modularization net (when installed) timed side by side; the nets differ
    in size, so the FLOPs of each are counted and the per-FLOP ratio is given too."""
    from cmrl.experiments.bench import _import_mtrl, _ratios, bench_modular_net

    fig = bench_modular_net(0.3, torch.device("cpu"), batch=64)
    assert fig["fwd_bwd_per_s"]["ours_fast"] > 0 and fig["ours_gflop_per_step"] > 0
    if not isinstance(_import_mtrl(), tuple):
        pytest.skip("mtrl is not installed (requirements-dev.txt)")
    assert 0 < fig["mtrl_gflop_per_step"] < fig["ours_gflop_per_step"]
    assert fig["ours_vs_mtrl_per_flop"] == round(
        fig["ours_vs_mtrl"] * fig["ours_gflop_per_step"] / fig["mtrl_gflop_per_step"], 3)
    assert _ratios({"modular_net": fig})["modular_net_vs_mtrl_per_flop"] == fig["ours_vs_mtrl_per_flop"]
