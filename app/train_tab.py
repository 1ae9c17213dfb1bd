"""What the Train tab shows: a recipe's description, its time estimate, a run's progress panel.

Text and HTML only; every number comes from `cmrl` (`cmrl.recipes`, the run's `status.json`) or
from `jobs.py`. The event wiring is in `ui.py`.
"""

from __future__ import annotations

import html

from .jobs import CUSTOM, JobStatus, format_seconds

PHASE_WORDS = {"data": "making data", "offline": "offline training", "online": "online training"}
STATE_COLOURS = {"running": "#2b7bd6", "stopping": "#d6892b", "finished": "#2e9e4f",
                 "failed": "#c9372c", "stopped": "#8a8a8a", "interrupted": "#8a8a8a",
                 "queued": "#8a8a8a", "cancelled": "#8a8a8a"}


def recipe_summary(name: str) -> str:
    """The recipe's title, summary and phases, from `cmrl.recipes.RECIPES` (custom: the flags)."""
    from cmrl.recipes import RECIPES

    if name == CUSTOM or name not in RECIPES:
        return ("**custom**: `python -m cmrl train` with the flags in the *custom run* section "
                "below (online from scratch by default; on a CPU that learns little in an hour).")
    r = RECIPES[name]
    phases = " → ".join(PHASE_WORDS.get(p.name, p.name) for p in r.phases())
    return f"**{r.title}**: {r.summary}.  \nPhases: {phases}."


def estimate_text(recipe: str, benchmark: str, device: str, est: dict) -> str:
    """`cmrl.recipes.estimate_seconds`'s answer in words."""
    parts = ", ".join(f"{PHASE_WORDS.get(k, k)} {format_seconds(v)}"
                      for k, v in est.get("phases", {}).items())
    return (f"**Estimate** for `{recipe}` on {benchmark}, device {est.get('device') or device}: "
            f"about **{format_seconds(est.get('total_s'))}** ({parts}). Updates timed on this "
            "machine just now; a guide, not a promise.")


def progress_html(st: JobStatus | None) -> str:
    """The selected run's panel: state, phases, a progress bar with step/total, rate and ETA,
    device and precision, and the message of a failed run."""
    if st is None:
        return "<div id='train-progress'><em>Pick a run launched from this page to follow it.</em></div>"
    e = html.escape
    colour = STATE_COLOURS.get(st.state, "#8a8a8a")
    head = (f"<b>{e(st.name)}</b> · <span class='train-state' style='color:{colour}'>"
            f"<b>{e(st.state)}</b></span> · {e(st.what)} · {e(st.benchmark)}")
    lines = [head]
    if st.state == "queued":
        lines.append(f"queued (position {st.queue_position}): starts when the running run ends")
    if st.phases:
        steps = [f"<b><u>{e(PHASE_WORDS.get(p, p))}</u></b>" if p == st.phase
                 else e(PHASE_WORDS.get(p, p)) for p in st.phases]
        lines.append("phases: " + " → ".join(steps))
    frac = st.fraction
    if frac is not None and st.state != "queued":
        pct = 100 * frac
        lines.append(
            f"<div class='train-bar' style='background:#e6e6e6;border-radius:5px;height:16px;"
            f"width:100%;overflow:hidden' title='{pct:.0f}%'><div class='train-bar-fill' "
            f"style='width:{pct:.1f}%;background:{colour};height:100%'></div></div>")
        rate = f" · {st.rate:,.1f} {e(st.unit)}/s" if st.rate else ""
        eta = f" · ETA {format_seconds(st.eta_s)}" if st.alive and st.eta_s is not None else ""
        lines.append(f"<span class='train-steps'>{st.step:,} / {st.target_steps:,} "
                     f"{e(st.unit)} ({pct:.0f}%)</span>{rate}{eta}")
    dev = f"device {e(st.device)}" + (f" · precision {e(st.precision)}" if st.precision else "")
    lines.append(dev)
    if st.message and st.state in ("failed", "stopped", "cancelled", "interrupted"):
        lines.append(f"<pre style='white-space:pre-wrap'>{e(st.message[-1500:])}</pre>")
    return "<div id='train-progress'>" + "<br>".join(lines) + "</div>"
