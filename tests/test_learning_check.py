"""The fast-vs-eager learning check (cmrl/experiments/learning_check.py) on synthetic run dirs."""

import json
import math

import pytest

from cmrl.experiments import learning_check as lc


def _run(path, losses, success):
    path.mkdir(parents=True)
    rows = [{"step": s, "wall_time": s / 10, "kl": kl, "critic_loss": c, "bc_mse": b}
            for s, (kl, c, b) in zip((1000, 2000, 3000, 4000), losses)]
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = {t: {"success_rate": v} for t, v in zip(("drawer-open-v3", "window-open-v3"), success)}
    (path / "evaluation.json").write_text(json.dumps({"splits": {"train": {"tasks": tasks}}}))


def _seeds(tmp_path, fast_success):
    dirs = []
    for i, noise in enumerate((0.0, 0.1, -0.1)):
        d = tmp_path / f"s{i}"
        losses = [(8 + noise, 15 + noise, 0.7 + noise / 10)] * 4
        _run(d / "eager", losses, (0.8 + noise, 0.9))
        _run(d / "fast", [(a + 0.05, b - 0.05, c) for a, b, c in losses],
             (fast_success + noise, 0.9))
        dirs.append(d)
    return dirs


def test_alike_runs_pass_and_figures_are_right(tmp_path):
    result = lc.compare(_seeds(tmp_path, fast_success=0.8))
    assert result["learn_alike"]
    m = result["metrics"]
    assert m["success_mean"]["eager_mean"] == pytest.approx(0.85)
    assert m["success_mean"]["eager_std"] == pytest.approx(0.05)
    assert m["kl_final"]["fast_mean"] == pytest.approx(8.05)
    assert m["kl_final"]["t"] == pytest.approx(0.05 / math.sqrt(2 * 0.01 / 3))
    assert m["wall_time_s"]["judged"] is False


def test_a_fast_path_that_learns_worse_fails(tmp_path, capsys):
    result = lc.compare(_seeds(tmp_path, fast_success=0.2))
    assert not result["learn_alike"]
    assert not result["metrics"]["success_mean"]["passes"]
    lc.print_report(result)
    assert "FAILS for: success_mean" in capsys.readouterr().out


def test_welch_t_of_constant_samples():
    assert lc.welch_t([1.0, 1.0], [1.0, 1.0]) == 0.0
    assert lc.welch_t([1.0, 1.0], [2.0, 2.0]) == math.inf


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    d = _seeds(tmp_path, 0.8)
    (d[1] / "fast" / "evaluation.json").unlink()
    assert lc.main([str(x) for x in d]) == 2
    assert "no meta-train evaluation" in capsys.readouterr().err
    assert lc.main([str(d[0])]) == 2
    out = tmp_path / "r.json"
    d2 = _seeds(tmp_path / "b", 0.8)
    assert lc.main([str(x) for x in d2] + ["--json", str(out)]) == 0
    assert json.loads(out.read_text())["learn_alike"] is True


def test_matmul_share_script_measures_an_update():
    """scripts/matmul_share.py on a tiny pearl update: shares are fractions, the bound follows."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "matmul_share.py"
    spec = importlib.util.spec_from_file_location("matmul_share", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.measure("pearl", "fast", batch=8, seconds=0.05, peak=100.0)
    assert 0 < r["matmul_share"] < 1
    assert r["gflop_per_update"] > 0 and r["matmul_gflops"] > 0
    assert r["bound_same_flops"] == pytest.approx(1 / (r["matmul_share"] * r["matmul_gflops"] / 100.0))
