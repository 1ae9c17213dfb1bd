"""Plotly figures for the app. Plotting only: every number comes from `cmrl`.

The figures streamed during a rollout (routing, posterior) are built once as a plotly skeleton and
then re-filled per update as plain JSON (`PlotData`): building a plotly figure costs ~20 ms, filling
the skeleton ~0.1 ms, which keeps the stream at frame rate.
"""

from __future__ import annotations

import json
import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from gradio.components.plot import PlotData
from plotly.subplots import make_subplots

from cmrl.agent_kinds import agent_kind
from cmrl.experiments.report import agent_color

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
_MARGIN = dict(l=30, r=20, t=60, b=30)


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def plot_data(fig: go.Figure | dict) -> PlotData:
    """A figure (or its JSON dict) in the form gr.Plot sends to the page."""
    d = fig.to_plotly_json() if isinstance(fig, go.Figure) else fig
    return PlotData(type="plotly", plot=json.dumps(d, default=_jsonable))


def message_figure(text: str, height: int = 260) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14))
    fig.update_layout(height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      margin=_MARGIN)
    return fig


def _r(x, nd: int = 4):
    return np.round(np.asarray(x, dtype=np.float64), nd).tolist()


# -- routing (streamed) ------------------------------------------------------------------------------
class RoutingFigure:
    """One n x n heatmap per routing layer (row j: how module j of the next layer mixes the modules
    below it; each row sums to 1) and the final n-way output mix as bars."""

    def __init__(self, routing: Sequence[np.ndarray], title: str = "actor routing"):
        layers, final = routing[:-1], np.asarray(routing[-1])
        self.n_layers, self.n = len(layers), int(final.shape[-1])
        cols = self.n_layers + 1
        fig = make_subplots(rows=1, cols=cols, horizontal_spacing=0.06,
                            column_widths=[1.0] * self.n_layers + [0.7],
                            subplot_titles=[f"routing {i + 1}→{i + 2}" for i in range(self.n_layers)]
                            + ["output mix"])
        labels = [f"m{i}" for i in range(self.n)]
        for i, p in enumerate(layers):
            fig.add_trace(go.Heatmap(z=_r(p), x=labels, y=labels, zmin=0, zmax=1,
                                     colorscale="Viridis", showscale=(i == 0),
                                     colorbar=dict(len=0.8, thickness=10),
                                     texttemplate="%{z:.2f}", name=f"layer {i + 1}",
                                     hovertemplate="to %{y} from %{x}: %{z:.3f}<extra></extra>"),
                          row=1, col=i + 1)
            fig.update_xaxes(title_text="from module", row=1, col=i + 1)
            fig.update_yaxes(title_text="to module" if i == 0 else None, autorange="reversed",
                             row=1, col=i + 1)
        fig.add_trace(go.Bar(x=labels, y=_r(final), marker_color="#440154", name="output mix",
                             hovertemplate="%{x}: %{y:.3f}<extra></extra>"), row=1, col=cols)
        fig.update_yaxes(range=[0, 1], row=1, col=cols)
        fig.update_layout(title=title, height=310, margin=_MARGIN, showlegend=False)
        self._skeleton = fig.to_plotly_json()
        self.title = title

    def render(self, routing: Sequence[np.ndarray], subtitle: str = "") -> PlotData:
        d = dict(self._skeleton)
        data = [dict(t) for t in d["data"]]
        for i in range(self.n_layers):
            data[i]["z"] = _r(routing[i])
        data[-1]["y"] = _r(routing[-1])
        d["data"] = data
        layout = dict(d["layout"])
        layout["title"] = {"text": f"{self.title}{' · ' + subtitle if subtitle else ''}"}
        d["layout"] = layout
        return plot_data(d)


def routing_unavailable(kind: str) -> PlotData:
    k = agent_kind(kind)
    return plot_data(message_figure(k.no_routing_note if not k.has_routing else "no routing yet",
                                    310))


# -- posterior (streamed) ----------------------------------------------------------------------------
class PosteriorFigure:
    """Mean ± std of each z dimension of the context posterior."""

    def __init__(self, dim: int):
        self.dim = dim
        fig = go.Figure(go.Bar(x=[f"z{i}" for i in range(dim)], y=[0.0] * dim,
                               error_y=dict(type="data", array=[1.0] * dim, visible=True),
                               marker_color="#1f77b4",
                               hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
        fig.update_layout(height=260, margin=_MARGIN, yaxis=dict(range=[-3, 3], title="z"))
        self._skeleton = fig.to_plotly_json()

    def render(self, mean: np.ndarray, std: np.ndarray, n: int) -> PlotData:
        d = dict(self._skeleton)
        bar = dict(d["data"][0])
        bar["y"] = _r(mean, 3)
        bar["error_y"] = dict(bar["error_y"], array=_r(std, 3))
        d["data"] = [bar]
        lim = max(3.0, float(np.max(np.abs(mean) + std)) * 1.1) if len(mean) else 3.0
        layout = dict(d["layout"])
        layout["yaxis"] = dict(layout["yaxis"], range=[-lim, lim])
        layout["title"] = {"text": f"posterior after {n} transitions · mean std "
                                   f"{float(np.mean(std)):.3f}"}
        d["layout"] = layout
        return plot_data(d)


def adaptation_figure(kind: str, episodes: list[str], values: list[float]) -> PlotData:
    """For an agent that adapts without a posterior (rl2, maml): per episode, the mean of its
    rollout's `adaptation` signal (rl2: hidden-state change per step; maml: |adapted - meta-learned
    mean action|, 0 before the inner steps)."""
    k = agent_kind(kind)
    title = ("hidden-state activity per episode (mean |Δh| per step)"
             if k.adapts_by == "hidden_state" else
             "action change of the inner steps per episode (mean |post − pre-update action|)")
    fig = go.Figure(go.Bar(x=episodes, y=_r(values, 4), marker_color=agent_color(kind),
                           hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(height=260, margin=_MARGIN, title=title)
    return plot_data(fig)


def posterior_unavailable(kind: str) -> PlotData:
    k = agent_kind(kind)
    return plot_data(message_figure(k.no_posterior_note if not k.uses_context
                                    else "no posterior yet"))


# -- routing inspector ------------------------------------------------------------------------------
def mean_routing_figure(profiles: dict[str, Sequence[np.ndarray]]) -> go.Figure:
    """Rows: tasks; columns: routing layers (heatmaps) and the output mix."""
    if not profiles:
        return message_figure("no routing collected yet")
    names = list(profiles)
    first = profiles[names[0]]
    n_layers, n = len(first) - 1, int(np.asarray(first[-1]).shape[-1])
    cols = n_layers + 1
    fig = make_subplots(rows=len(names), cols=cols, vertical_spacing=0.08 / max(1, len(names) / 3),
                        horizontal_spacing=0.05,
                        subplot_titles=[f"{t} · {'routing %d→%d' % (j + 1, j + 2) if j < n_layers else 'output mix'}"
                                        for t in names for j in range(cols)])
    labels = [f"m{i}" for i in range(n)]
    for r, task in enumerate(names):
        routing = profiles[task]
        for j in range(n_layers):
            fig.add_trace(go.Heatmap(z=_r(routing[j], 3), x=labels, y=labels, zmin=0, zmax=1,
                                     colorscale="Viridis", showscale=(r == 0 and j == 0),
                                     texttemplate="%{z:.2f}",
                                     hovertemplate=f"{task}<br>to %{{y}} from %{{x}}: %{{z:.3f}}"
                                                   "<extra></extra>"),
                          row=r + 1, col=j + 1)
            fig.update_yaxes(autorange="reversed", row=r + 1, col=j + 1)
        fig.add_trace(go.Bar(x=labels, y=_r(routing[-1], 3), marker_color="#440154",
                             hovertemplate=f"{task}<br>%{{x}}: %{{y:.3f}}<extra></extra>"),
                      row=r + 1, col=cols)
        fig.update_yaxes(range=[0, 1], row=r + 1, col=cols)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=220 * len(names) + 60, margin=_MARGIN, showlegend=False,
                      title="mean actor routing per task")
    return fig


def similarity_figure(names: list[str], matrix: np.ndarray, metric: str) -> go.Figure:
    signed = metric == "centered-cosine"
    fig = go.Figure(go.Heatmap(z=_r(matrix, 3), x=names, y=names, zmin=-1 if signed else 0,
                               zmax=1, colorscale="RdBu" if signed else "Blues",
                               texttemplate="%{z:.3f}",
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"task-by-task routing similarity ({metric})", height=420,
                      margin=dict(l=120, r=20, t=60, b=100))
    return fig


# -- training curves --------------------------------------------------------------------------------
def _series(rows: list[dict], key: str, x: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get(x, r.get("step")))
            ys.append(v)
    return xs, ys


def training_figure(rows: list[dict], title: str = "", x: str = "step") -> go.Figure:
    """Live curves of a run's metrics.jsonl: success per task, returns, losses, alpha and KL."""
    if not rows:
        return message_figure("no metrics yet: the first line of metrics.jsonl appears after the "
                              "first training iteration", 420)
    keys = sorted({k for r in rows for k in r})
    tasks = sorted({k.split("/", 1)[1] for k in keys if "/" in k})
    color = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(tasks)}
    fig = make_subplots(rows=2, cols=2, subplot_titles=["success per task", "return per task",
                                                       "losses", "alpha and KL"],
                        vertical_spacing=0.14)
    styles = {"train": dict(dash="solid"), "eval_train": dict(dash="dot"),
              "eval_test": dict(dash="dash")}
    for col, what in ((1, "success"), (2, "return")):
        for prefix, style in styles.items():
            for t in tasks:
                xs, ys = _series(rows, f"{prefix}_{what}/{t}", x)
                if xs:
                    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", line=dict(
                        color=color[t], **style), marker=dict(size=4),
                        name=f"{t} ({prefix.replace('_', ' ')})", legendgroup=t,
                        showlegend=(col == 1)), row=1, col=col)
    for key, c in (("critic_loss", "#d62728"), ("actor_loss", "#9467bd"), ("bc_loss", "#8c564b")):
        xs, ys = _series(rows, key, x)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=key, line=dict(color=c)),
                          row=2, col=1)
    for key, c in (("alpha", "#17becf"), ("kl", "#bcbd22")):
        xs, ys = _series(rows, key, x)
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=key, line=dict(color=c)),
                          row=2, col=2)
    fig.update_yaxes(range=[-0.05, 1.05], row=1, col=1)
    fig.update_xaxes(title_text=x.replace("_", " "), row=2)
    fig.update_layout(title=title, height=560, margin=dict(l=40, r=20, t=70, b=40),
                      legend=dict(font=dict(size=10)))
    return fig


# -- results ----------------------------------------------------------------------------------------
def success_bars_figure(table: dict[str, dict[str, dict]], tasks: list[str],
                        held_out: set[str], title: str) -> go.Figure:
    """Grouped bars: success per task (x) per agent (colour), error bars = std over seeds
    (table[agent][task] = {"mean", "std", "n"})."""
    fig = go.Figure()
    for i, (agent, per_task) in enumerate(table.items()):
        n = max((v.get("n", 1) for v in per_task.values()), default=1)
        fig.add_trace(go.Bar(
            x=[t + (" (held out)" if t in held_out else "") for t in tasks],
            y=[per_task.get(t, {}).get("mean") for t in tasks],
            error_y=dict(type="data", array=[per_task.get(t, {}).get("std") or 0 for t in tasks],
                         visible=n > 1),
            name=f"{agent} (n={n})", marker_color=agent_color(agent),
            hovertemplate="%{x}: %{y:.2f}<extra>" + agent + "</extra>"))
    fig.update_layout(barmode="group", title=title, height=400, yaxis=dict(range=[0, 1.05],
                      title="success rate"), margin=dict(l=50, r=20, t=60, b=60))
    return fig


def return_curves_figure(curves: dict[str, list[dict]], tasks: list[str], held_out: set[str],
                         x_label: str) -> go.Figure:
    """One panel per task; per agent one line per seed: evaluation return over training.
    curves[agent] = [{"label", "x": [...], "returns": {task: [...]}}]."""
    if not tasks:
        return message_figure("no evaluation returns in the shipped metrics.jsonl files", 300)
    cols = min(len(tasks), 4)
    rows = math.ceil(len(tasks) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[
        t + (" (held out)" if t in held_out else "") for t in tasks])
    for ai, (agent, runs) in enumerate(curves.items()):
        c = agent_color(agent)
        for ri, run in enumerate(runs):
            for ti, task in enumerate(tasks):
                ys = run["returns"].get(task)
                if not ys:
                    continue
                xs = [x for x, y in zip(run["x"], ys) if y is not None]
                ys = [y for y in ys if y is not None]
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", marker=dict(size=4),
                                         line=dict(color=c, width=2 if ri == 0 else 1),
                                         name=agent, legendgroup=agent,
                                         showlegend=(ti == 0 and ri == 0),
                                         hovertemplate=f"{agent} {run['label']}<br>%{{x}}: "
                                                       "%{y:.1f}<extra></extra>"),
                              row=ti // cols + 1, col=ti % cols + 1)
    fig.update_xaxes(title_text=x_label)
    fig.update_layout(height=320 * rows + 60, title="evaluation return over training",
                      margin=dict(l=50, r=20, t=70, b=40))
    return fig
