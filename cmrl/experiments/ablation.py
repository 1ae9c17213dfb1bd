"""The method ablation: every cmrl variant's numbers, and the selection rule that picks the default.

Reads the runs `scripts/variant_runs.sh` writes, `ROOT/<variant>/<bench>-s<seed>/` with
`config.json`, `evaluation.json` (canonical goal texts) and `evaluation_unseen.json` (phrasings
never used in training), where `<bench>` is `ml4` or `loto` (meta-train drawer-close and
window-open, held-out drawer-open: the validation split of `docs/method_selection.md`).

`select_finalists` and `select_default` are that document's rule as code. They read only ML4's
meta-train tasks and the LOTO split; the ML4 held-out task's columns are in every table but no
function here that chooses looks at them (`test_ablation.py` checks that changing them changes no
choice).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..variants import VARIANTS

TIE = 0.05
"""Scores this close count as tied (then the tie-breakers decide)."""
ELIGIBLE_MEAN, ELIGIBLE_MIN = 0.90, 0.70
"""Screening: ML4 meta-train mean success after adaptation, and every task's, at least these."""

_RUN_DIR = re.compile(r"^(ml4|loto)-s(\d+)$")


@dataclass
class RunNumbers:
    """What one evaluation file says, reduced to the columns of the ablation."""

    train: dict[str, float]
    """Meta-train task -> success after adaptation."""
    train_zero_shot: dict[str, float]
    test: dict[str, float]
    """Held-out task -> success after adaptation."""
    test_zero_shot: dict[str, float]


def read_evaluation(path: str | Path) -> RunNumbers:
    ev = json.loads(Path(path).read_text())
    parts = {s: p["tasks"] for s, p in ev["splits"].items()}

    def col(split, key):
        return {t: float(r[key]) for t, r in parts.get(split, {}).items()
                if r.get(key) is not None}

    return RunNumbers(col("train", "success_rate"), col("train", "zero_shot_success"),
                      col("test", "success_rate"), col("test", "zero_shot_success"))


@dataclass
class VariantResult:
    """One variant's runs: per bench, per seed, the canonical and unseen-phrasing numbers."""

    name: str
    runs: dict[str, dict[int, RunNumbers]] = field(default_factory=dict)
    unseen: dict[str, dict[int, RunNumbers]] = field(default_factory=dict)
    budgets: dict[str, dict[int, dict]] = field(default_factory=dict)

    def seeds(self, bench: str) -> list[int]:
        return sorted(self.runs.get(bench, {}))

    def _per_seed(self, bench: str, fn, unseen: bool = False) -> list[float]:
        src = (self.unseen if unseen else self.runs).get(bench, {})
        return [fn(src[s]) for s in sorted(src)]

    # -- the columns (each a list over seeds) -----------------------------------------------------
    def train_mean(self, bench: str, unseen: bool = False) -> list[float]:
        return self._per_seed(bench, lambda r: float(np.mean(list(r.train.values()))), unseen)

    def train_min(self, bench: str) -> list[float]:
        return self._per_seed(bench, lambda r: float(min(r.train.values())))

    def train_task(self, bench: str, task: str) -> list[float]:
        return self._per_seed(bench, lambda r: r.train[task])

    def train_zero_shot_mean(self, bench: str) -> list[float]:
        return self._per_seed(bench, lambda r: float(np.mean(list(r.train_zero_shot.values()))))

    def held_out(self, bench: str, zero_shot: bool = False, unseen: bool = False) -> list[float]:
        def get(r: RunNumbers) -> float:
            values = r.test_zero_shot if zero_shot else r.test
            return float(np.mean(list(values.values())))

        return self._per_seed(bench, get, unseen)


def load_variants(root: str | Path) -> dict[str, VariantResult]:
    """Every variant folder under `root` with at least one evaluated run, in `VARIANTS` order
    (unknown names last)."""
    out: dict[str, VariantResult] = {}
    root = Path(root)
    for vdir in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        res = VariantResult(vdir.name)
        for run in sorted(vdir.iterdir()):
            m = _RUN_DIR.match(run.name)
            if not m or not (run / "evaluation.json").exists():
                continue
            bench, seed = m.group(1), int(m.group(2))
            res.runs.setdefault(bench, {})[seed] = read_evaluation(run / "evaluation.json")
            if (run / "evaluation_unseen.json").exists():
                res.unseen.setdefault(bench, {})[seed] = read_evaluation(run / "evaluation_unseen.json")
            info = json.loads((run / "config.json").read_text())
            res.budgets.setdefault(bench, {})[seed] = {
                "grad_steps": info.get("grad_steps"), "env_steps": info.get("env_steps"),
                "wall_time_s": info.get("wall_time_s"), "device": info.get("device")}
        if res.runs:
            out[vdir.name] = res
    order = list(VARIANTS)
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                     else len(order), kv[0])))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _fields_changed(name: str) -> int:
    return len(VARIANTS[name].fields) if name in VARIANTS else 99


# -- the selection rule (docs/method_selection.md) ------------------------------------------------
def _best(candidates: list[VariantResult], score, tie_breakers) -> VariantResult:
    top = max(score(c) for c in candidates)
    tied = [c for c in candidates if score(c) >= top - TIE]
    return max(tied, key=lambda c: tuple(tb(c) for tb in tie_breakers))


def eligible(v: VariantResult) -> bool:
    """Screening eligibility: ML4 meta-train mean >= 0.90 and every meta-train task >= 0.70."""
    return bool(v.seeds("ml4")) and _mean(v.train_mean("ml4")) >= ELIGIBLE_MEAN and \
        _mean(v.train_min("ml4")) >= ELIGIBLE_MIN


def select_finalists(variants: dict[str, VariantResult], k: int = 2) -> tuple[list[str], str]:
    """Stage 1: the k best eligible variants by LOTO held-out success after adaptation (ties:
    ML4 meta-train mean, then LOTO zero-shot, then fewer changed fields); ineligible ones fill
    missing places. Returns the names and a sentence saying how they were picked."""
    scored = [v for v in variants.values() if v.seeds("loto") and v.seeds("ml4")]

    def score(v):
        return _mean(v.held_out("loto"))

    breakers = (lambda v: _mean(v.train_mean("ml4")), lambda v: _mean(v.held_out("loto", True)),
                lambda v: -_fields_changed(v.name))
    picked: list[VariantResult] = []
    for pool in ([v for v in scored if eligible(v)], [v for v in scored if not eligible(v)]):
        pool = list(pool)
        while pool and len(picked) < k:
            best = _best(pool, score, breakers)
            picked.append(best)
            pool.remove(best)
    n_eligible = sum(eligible(v) for v in picked)
    why = (f"{n_eligible} of the {len(picked)} finalists are eligible (ML4 meta-train mean >= "
           f"{ELIGIBLE_MEAN}, every task >= {ELIGIBLE_MIN}); ranked by LOTO drawer-open success "
           f"after adaptation")
    return [v.name for v in picked], why


def select_default(variants: dict[str, VariantResult], finalists: list[str],
                   baseline: str = "baseline") -> tuple[str, str]:
    """Stage 2: among the finalists whose ML4 meta-train mean over seeds is >= 0.90, the highest
    LOTO mean (ties: ML4 meta-train mean); it replaces `baseline` only if its LOTO score is higher.
    Returns (name, reason)."""
    ok = [variants[f] for f in finalists if f in variants and
          _mean(variants[f].train_mean("ml4")) >= ELIGIBLE_MEAN and variants[f].seeds("loto")]
    if not ok:
        return baseline, "no finalist reached an ML4 meta-train mean of 0.90 over its seeds"
    best = _best(ok, lambda v: _mean(v.held_out("loto")),
                 (lambda v: _mean(v.train_mean("ml4")),))
    base = variants.get(baseline)
    base_score = _mean(base.held_out("loto")) if base and base.seeds("loto") else float("-inf")
    best_score = _mean(best.held_out("loto"))
    if best_score > base_score:
        return best.name, (f"{best.name}: LOTO drawer-open {best_score:.2f} vs {baseline} "
                           f"{base_score:.2f}, ML4 meta-train {_mean(best.train_mean('ml4')):.2f}")
    return baseline, (f"no finalist beat {baseline} on LOTO drawer-open ({best.name} "
                      f"{best_score:.2f} vs {base_score:.2f})")


# -- tables ---------------------------------------------------------------------------------------
def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def ablation_markdown(variants: dict[str, VariantResult]) -> str:
    """Variant x columns: ML4 meta-train (mean, worst task, zero-shot, unseen phrasing), ML4
    held-out (zero-shot, adapted, gain, unseen phrasing), LOTO held-out (zero-shot, adapted)."""
    head = ("| variant | n | ML4 meta-train adapted | worst meta-train task | meta-train zero-shot "
            "| meta-train, unseen phrasing | window-close zero-shot | window-close adapted | "
            "window-close gain | window-close, unseen phrasing | LOTO drawer-open zero-shot | "
            "LOTO drawer-open adapted |\n|---|" + "---|" * 11)
    rows = []
    for name, v in variants.items():
        gain = [a - z for a, z in zip(v.held_out("ml4"), v.held_out("ml4", zero_shot=True))]
        rows.append("| " + " | ".join([
            name, str(len(v.seeds("ml4"))), _cell(v.train_mean("ml4")), _cell(v.train_min("ml4")),
            _cell(v.train_zero_shot_mean("ml4")), _cell(v.train_mean("ml4", unseen=True)),
            _cell(v.held_out("ml4", zero_shot=True)), _cell(v.held_out("ml4")), _cell(gain),
            _cell(v.held_out("ml4", unseen=True)), _cell(v.held_out("loto", zero_shot=True)),
            _cell(v.held_out("loto"))]) + " |")
    return head + "\n" + "\n".join(rows)


def report(root: str | Path, finalists_root: str | Path | None = None) -> dict:
    """Tables and choices for `python -m cmrl ablation`: stage 1 from `root`, stage 2 from
    `finalists_root` when given."""
    screen = load_variants(root)
    finalists, why = select_finalists(screen)
    out = {"screening": {"root": str(root), "table": ablation_markdown(screen),
                         "finalists": finalists, "why": why}}
    if finalists_root is not None:
        final = load_variants(finalists_root)
        chosen, reason = select_default(final, finalists)
        out["finalists"] = {"root": str(finalists_root), "table": ablation_markdown(final),
                            "chosen": chosen, "why": reason}
    return out
