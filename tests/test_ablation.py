"""The pre-registered selection rule (docs/method_selection.md) as code: who is eligible, who wins,
and that the ML4 held-out task's numbers cannot change any choice."""

from __future__ import annotations

import json

import pytest

from cmrl.experiments.ablation import ablation_markdown, load_variants, report, select_default, select_finalists

ML4_TRAIN = ("drawer-open-v3", "drawer-close-v3", "window-open-v3")


def _eval(train: dict[str, float], test: dict[str, float], zs: float = 0.0) -> dict:
    def part(tasks):
        return {"tasks": {t: {"success_rate": s, "zero_shot_success": zs, "mean_return": 1.0}
                          for t, s in tasks.items()}}
    return {"splits": {"train": part(train), "test": part(test)}}


def _run(root, variant, bench, seed, train, held, zs=0.0):
    d = root / variant / f"{bench}-s{seed}"
    d.mkdir(parents=True)
    test_task = "window-close-v3" if bench == "ml4" else "drawer-open-v3"
    (d / "evaluation.json").write_text(json.dumps(_eval(train, {test_task: held}, zs)))
    (d / "config.json").write_text(json.dumps({"grad_steps": 4000, "wall_time_s": 1.0}))


def _screen(root, window_close: dict[str, float]):
    # variant: (ML4 meta-train per task, LOTO drawer-open adapted, LOTO zero-shot)
    spec = {"baseline": ((1.0, 1.0, 0.9), 0.2, 0.0),
            "task-routing": ((0.9, 1.0, 1.0), 0.7, 0.0),
            "task-routing-mlp": ((1.0, 1.0, 1.0), 0.68, 0.5),   # tied with task-routing: wins on ML4
            "context-dropout": ((0.6, 1.0, 1.0), 0.9, 0.0),      # best LOTO, but not eligible
            "td3bc": ((1.0, 1.0, 1.0), 0.1, 0.0)}
    for name, (ml4, loto, loto_zs) in spec.items():
        _run(root, name, "ml4", 0, dict(zip(ML4_TRAIN, ml4)), window_close[name])
        _run(root, name, "loto", 0, {"drawer-close-v3": 1.0, "window-open-v3": 1.0}, loto, loto_zs)


def test_screening_picks_eligible_variants_by_loto(tmp_path):
    _screen(tmp_path, dict.fromkeys(["baseline", "task-routing", "task-routing-mlp",
                                     "context-dropout", "td3bc"], 0.0))
    finalists, why = select_finalists(load_variants(tmp_path))
    assert finalists == ["task-routing-mlp", "task-routing"]
    assert "2 of the 2 finalists are eligible" in why


@pytest.mark.parametrize("seed", range(5))
def test_held_out_numbers_change_no_choice(tmp_path, seed):
    import random

    rnd = random.Random(seed)
    names = ["baseline", "task-routing", "task-routing-mlp", "context-dropout", "td3bc"]
    _screen(tmp_path / "a", dict.fromkeys(names, 0.0))
    _screen(tmp_path / "b", {n: rnd.random() for n in names})
    a, b = report(tmp_path / "a", tmp_path / "a"), report(tmp_path / "b", tmp_path / "b")
    assert a["screening"]["finalists"] == b["screening"]["finalists"]
    assert a["finalists"]["chosen"] == b["finalists"]["chosen"]
    assert a["screening"]["table"] != b["screening"]["table"]  # ... while the table shows them


def test_default_needs_to_beat_baseline_on_loto(tmp_path):
    for s in range(3):
        _run(tmp_path, "baseline", "ml4", s, dict.fromkeys(ML4_TRAIN, 1.0), 0.0)
        _run(tmp_path, "baseline", "loto", s, {"drawer-close-v3": 1.0}, 0.5)
        _run(tmp_path, "task-routing", "ml4", s, dict.fromkeys(ML4_TRAIN, 1.0), 1.0)
        _run(tmp_path, "task-routing", "loto", s, {"drawer-close-v3": 1.0}, 0.4)
        _run(tmp_path, "td3bc", "ml4", s, dict.fromkeys(ML4_TRAIN, 0.5), 1.0)   # not eligible
        _run(tmp_path, "td3bc", "loto", s, {"drawer-close-v3": 1.0}, 1.0)
    variants = load_variants(tmp_path)
    chosen, why = select_default(variants, ["task-routing", "td3bc"])
    assert chosen == "baseline" and "no finalist beat baseline" in why
    table = ablation_markdown(variants)
    assert "| task-routing | 3 | 1.00 ± 0.00 |" in table
