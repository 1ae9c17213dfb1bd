"""`cmrl eval` (both protocols) into run directories, then `cmrl report`: results.json, tables, figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cmrl
from cmrl.experiments.report import find_runs, report
from tests.test_end_to_end import tiny


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "cmrl", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml4")
    for kind, seed in (("pearl", 0), ("pearl", 1), ("sm", 0)):
        cfg = tiny(kind, steps=180)
        cfg.train.seed = seed
        run = root / f"{kind}-s{seed}"
        cmrl.train(cfg, run, progress=False)
        r = _cli("eval", "--checkpoint", run, "--variations", 2, "--adaptation-episodes", 1,
                 "--json", run / "evaluation.json")
        assert r.returncode == 0, r.stderr
    run = root / "pearl-s0"
    r = _cli("eval", "--checkpoint", run, "--protocol", "metaworld", "--variations", 1,
             "--adaptation-episodes", 1, "--json", run / "metaworld_evaluation.json")
    assert r.returncode == 0, r.stderr
    return root


def test_metaworld_protocol_file(root):
    ev = json.loads((root / "pearl-s0" / "metaworld_evaluation.json").read_text())
    assert ev["protocol"]["name"] == "metaworld.evaluation.metalearning_evaluation"
    assert set(ev["splits"]["train"]["tasks"]) == set(cmrl.envs.tasks.ML4_TRAIN)
    assert set(ev["splits"]["test"]["tasks"]) == {"window-close-v3"}
    assert "--protocol metaworld" in ev["command"]


def test_report_aggregates_over_seeds(root, tmp_path):
    assert {k: len(v) for k, v in find_runs(root).items()} == {"pearl": 2, "sm": 1}
    res = report(root)
    assert json.loads((root / "results.json").read_text())["agents"].keys() == {"pearl", "sm"}
    per_seed = [json.loads((root / f"pearl-s{s}" / "evaluation.json").read_text())
                ["splits"]["test"]["tasks"]["window-close-v3"]["success_rate"] for s in (0, 1)]
    wc = res["agents"]["pearl"]["protocols"]["cmrl"]["tasks"]["window-close-v3"]
    assert wc["split"] == "test" and wc["success"]["n"] == 2
    assert wc["success"]["values"] == per_seed
    assert wc["success"]["mean"] == pytest.approx(sum(per_seed) / 2)
    assert res["agents"]["pearl"]["protocols"]["metaworld"]["tasks"]["window-close-v3"]["success"]["n"] == 1
    assert res["agents"]["sm"]["runs"][0]["mode"] == "online"
    r = _cli("report", "--root", root, "--figures", tmp_path / "assets")
    assert r.returncode == 0, r.stderr
    assert "| pearl (n=2) |" in r.stdout and "window-close-v3 (held out)" in r.stdout
    pytest.importorskip("matplotlib")
    pngs = sorted(p.name for p in (tmp_path / "assets").glob("*.png"))
    assert pngs == ["ml4_success_cmrl.png", "ml4_success_metaworld.png", "ml4_training_curves.png"]
    assert all((tmp_path / "assets" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # figures are named after the runs' benchmark (an ML10 report used to write ml4_*.png)
    assert res["benchmark"] == "ml4"
    from cmrl.experiments.report import figures

    written = figures({**res, "benchmark": "ml10"}, tmp_path / "ml10")
    assert sorted(p.name for p in written) == ["ml10_success_cmrl.png", "ml10_success_metaworld.png",
                                               "ml10_training_curves.png"]
    # runs trained with --eval-every 0 have no curve points: no empty curves figure
    no_curves = {**res, "benchmark": "ml10",
                 "training_curves": {a: [{**r, "points": []} for r in runs]
                                     for a, runs in res["training_curves"].items()}}
    assert [p.name for p in figures(no_curves, tmp_path / "flat")] == [
        "ml10_success_cmrl.png", "ml10_success_metaworld.png"]


def test_runs_benchmark_is_read_from_the_configs(root, tmp_path):
    import shutil

    from cmrl.experiments.report import aggregate_evaluations, runs_benchmark

    assert runs_benchmark(aggregate_evaluations(find_runs(root))) == "ml4"
    shutil.copytree(root / "sm-s0", tmp_path / "sm-s0")
    cfg_path = tmp_path / "sm-s0" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["config"]["benchmark"]["name"] = "ml10"
    cfg_path.write_text(json.dumps(cfg))
    assert runs_benchmark(aggregate_evaluations(find_runs(tmp_path))) == "ml10"
    shutil.copytree(root / "pearl-s0", tmp_path / "pearl-s0")
    assert runs_benchmark(aggregate_evaluations(find_runs(tmp_path))) == "mixed"
    assert runs_benchmark({}) == "unknown"


def test_unreadable_files_raise_or_become_problems(root, tmp_path):
    """`cmrl report` stops at a corrupt file; with a `problems` list (the app) it is noted and left
    out of the mean."""
    import shutil

    from cmrl.experiments.report import aggregate_evaluations

    for s in (0, 1, 2):
        shutil.copytree(root / f"pearl-s{min(s, 1)}", tmp_path / f"pearl-s{s}")
    (tmp_path / "pearl-s1" / "evaluation.json").write_text("{not json")
    with pytest.raises(ValueError):
        aggregate_evaluations(find_runs(tmp_path))
    (tmp_path / "pearl-s2" / "config.json").write_text('{"config": {}}')
    with pytest.raises(KeyError):
        find_runs(tmp_path)
    problems: list[str] = []
    agg = aggregate_evaluations(find_runs(tmp_path, problems), problems)
    assert len(problems) == 2 and "pearl-s2" in problems[0] and "pearl-s1" in problems[1]
    assert [r["seed"] for r in agg["pearl"]["runs"]] == [0, 1]
    s0 = json.loads((root / "pearl-s0" / "evaluation.json").read_text())["splits"]["test"]["tasks"]
    wc = agg["pearl"]["protocols"]["cmrl"]["tasks"]["window-close-v3"]["success"]
    assert wc["n"] == 1 and wc["values"] == [s0["window-close-v3"]["success_rate"]]
