"""Plotly figures for the app: routing heatmaps and the context posterior."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def routing_figure(routing: list[np.ndarray] | None, title: str = "") -> go.Figure:
    """One n x n heatmap per routing layer (row j: where module j of the next layer reads from),
    plus the final n-way mix as a 1 x n strip."""
    if not routing:
        fig = go.Figure()
        fig.update_layout(title="no routing: this agent's actor is a plain MLP (pearl)", height=260)
        return fig
    layers, final = routing[:-1], routing[-1]
    cols = len(layers) + 1
    fig = make_subplots(rows=1, cols=cols, subplot_titles=[f"layer {i + 1}->{i + 2}" for i in
                                                          range(len(layers))] + ["output mix"])
    for i, p in enumerate(layers):
        fig.add_trace(go.Heatmap(z=p, zmin=0, zmax=1, colorscale="Viridis", showscale=(i == 0),
                                 texttemplate="%{z:.2f}"), row=1, col=i + 1)
    fig.add_trace(go.Heatmap(z=np.asarray(final)[None], zmin=0, zmax=1, colorscale="Viridis",
                             showscale=False, texttemplate="%{z:.2f}"), row=1, col=cols)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=300, margin=dict(l=20, r=20, t=60, b=20))
    return fig


def posterior_figure(mean: np.ndarray, std: np.ndarray, n: int) -> go.Figure:
    fig = go.Figure(go.Bar(x=[f"z{i}" for i in range(len(mean))], y=mean,
                           error_y=dict(type="data", array=std, visible=True)))
    fig.update_layout(title=f"context posterior after {n} transitions (mean ± std)", height=260,
                      margin=dict(l=20, r=20, t=50, b=20))
    return fig
