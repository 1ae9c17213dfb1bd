"""The `graphed` update path: one whole SAC + KL update captured as a CUDA graph, then replayed.

On a GPU the update is bound by launching a few thousand small kernels from Python, not by
arithmetic (docs/speed.md: an H100 ran the cmrl update only 1.4-2.4x faster than a 2-core CPU). A
CUDA graph records the kernels of one update (critic and encoder step, actor step, temperatures,
Polyak averaging) with the memory they read and write; every later update copies its inputs into
the graph's own input tensors and launches the whole record at once.

What capture asks of the update, and how `sac.py` meets it:

- fixed shapes: one graph per input signature (each input's shape and dtype, which inputs are
  present, whether the actor steps), captured the first time that signature is seen;
- no waiting for the host inside: the metrics stay device tensors (`read_metrics=False`), and
  nothing branches on tensor values (sm's one-hot ids are built by comparison, `agent.py`);
- optimiser state on the device: Adam runs with `capturable=True`;
- state created lazily must exist before capture, or capture would record its creation and replay
  it every step: each signature first runs `WARMUP` ordinary updates, on a side stream as
  PyTorch asks, which create the optimisers' moments. They are real updates of the run;
- random draws (z, the actions' noise): PyTorch gives every replay its own philox offset from the
  CUDA generator, so each replay draws fresh numbers, as an uncaptured update would;
- anything that swaps out a tensor a graph reads (loading optimiser state) must call `reset`.

A capture that fails warns and leaves the learner on `eager` (the update of that batch runs there).
`capture=False` runs the same static-input plumbing without capturing: the CPU tests use it.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch

WARMUP = 3
"""Ordinary updates per input signature before it is captured."""

Inputs = dict[str, torch.Tensor | None]
Step = Callable[[Inputs, bool], dict[str, torch.Tensor]]


class _Graph:
    """One captured update: its input tensors, the graph, and the metrics it writes."""

    def __init__(self, inputs: Inputs):
        self.inputs = {k: (v.detach().clone() if v is not None else None) for k, v in inputs.items()}
        self.graph: torch.cuda.CUDAGraph | None = None
        self.keys: list[str] = []
        self.packed: torch.Tensor | None = None  # [len(keys)] metrics, rewritten by every replay

    def load(self, inputs: Inputs) -> None:
        for k, v in inputs.items():
            if v is not None:
                self.inputs[k].copy_(v, non_blocking=True)


class GraphedUpdate:
    """Runs `step(inputs, update_actor) -> metrics` through CUDA graphs, one per input signature.

    `step` must be the whole update (optimiser steps included) and read nothing but `inputs`, the
    module's parameters, buffers and optimiser state. `on_failure(exc)` is called when a capture
    fails (the caller switches paths); this object then only runs `step` directly."""

    def __init__(self, step: Step, device: torch.device, capture: bool = True,
                 on_failure: Callable[[Exception], None] | None = None):
        self.step = step
        self.device = device
        self.capture = capture
        self.on_failure = on_failure
        self.failed = False
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: dict[tuple, int] = {}
        self.capture_seconds = 0.0
        """Seconds spent capturing (all signatures so far), apart from the updates' own time."""
        self._side = torch.cuda.Stream(device) if capture else None

    @staticmethod
    def signature(inputs: Inputs, update_actor: bool) -> tuple:
        return (update_actor,) + tuple(
            (k, None if v is None else (tuple(v.shape), v.dtype, v.device))
            for k, v in sorted(inputs.items()))

    def reset(self) -> None:
        """Drop every graph (their memory with them); the next updates warm up and capture again."""
        self.graphs.clear()
        self.seen.clear()

    def __call__(self, inputs: Inputs, update_actor: bool) -> dict[str, torch.Tensor]:
        if self.failed:
            return self.step(inputs, update_actor)
        sig = self.signature(inputs, update_actor)
        g = self.graphs.get(sig)
        if g is None:
            n = self.seen.get(sig, 0)
            if n < WARMUP:
                self.seen[sig] = n + 1
                return self._warm(inputs, update_actor)
            g = self._capture(inputs, update_actor)
            if g is None:  # capture failed: this update runs uncaptured
                return self.step(inputs, update_actor)
            self.graphs[sig] = g
        g.load(inputs)
        if g.graph is not None:
            g.graph.replay()
        else:  # capture=False: the same static inputs, run directly
            g.packed = self._pack(g, self.step(g.inputs, update_actor))
        values = g.packed.clone()  # the next replay overwrites `packed`
        return {k: values[i] for i, k in enumerate(g.keys)}

    def _warm(self, inputs: Inputs, update_actor: bool) -> dict[str, torch.Tensor]:
        if self._side is None:
            return self.step(inputs, update_actor)
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            metrics = self.step(inputs, update_actor)
        current.wait_stream(self._side)
        return metrics

    @staticmethod
    def _pack(g: _Graph, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        g.keys = list(metrics)
        return torch.stack([v.detach().float().reshape(()) for v in metrics.values()])

    def _capture(self, inputs: Inputs, update_actor: bool) -> _Graph | None:
        g = _Graph(inputs)
        if not self.capture:
            return g
        start = time.perf_counter()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                metrics = self.step(g.inputs, update_actor)
                g.packed = self._pack(g, metrics)
            g.graph = graph
        except Exception as e:  # noqa: BLE001 - anything capture refuses means: run uncaptured
            self.failed = True
            self.reset()
            torch.cuda.synchronize(self.device)
            warnings.warn(f"CUDA graph capture of the SAC update failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); running the uncaptured "
                          "eager update instead", RuntimeWarning, stacklevel=4)
            if self.on_failure:
                self.on_failure(e)
            return None
        finally:
            self.capture_seconds += time.perf_counter() - start
        return g
