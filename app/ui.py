"""The demo page: Adapt, Compare goals, Routing inspector, Train, Results, one class per tab
(`adapt_tab.py`, `compare_tab.py`, `inspect_tab.py`, `train_tab.py`, `results_tab.py`, on
`base.py`), put together here, with the settings a public page needs.

The work is in `adapt.py` (streamed rollouts), `jobs.py` (training processes), `results.py`
(shipped results) and `cmrl` itself (rollouts, routing analysis). Every handler turns bad input
into a `gr.Error` with a message that says what to do (logged as one line, no traceback); a request
that fits no endpoint gets one refusal of its own (`guard.py`); every input reaches its handler as
sent (`inputs.py`), checkpoints and datasets are read only from the allowed roots (`roots.py`).
"""

from __future__ import annotations

import logging
import os

import gradio as gr

from .adapt_tab import AdaptTab
from .base import ROLLOUT_CONCURRENCY, log
from .compare_tab import CompareTab
from .guard import PageBlocks
from .inspect_tab import InspectTab
from .results_tab import ResultsTab
from .train_tab import TrainTab

QUEUE_SIZE = 32
STATE_SESSIONS = int(os.environ.get("CMRL_APP_SESSIONS", "200"))
"""Sessions whose state gradio keeps in memory. Every API call without a session makes a new one,
holding what it showed (0.3-0.4 MB a session, docs/public_page.md); gradio's default of 10,000
would let anonymous calls fill GBs."""
M_ARENA_MAX = -8  # glibc's mallopt parameter
CSS = """
#frame img, .cmp-frame img {width: 100%; height: 100%; object-fit: contain;}
.small-md p {font-size: 0.92em;}
"""


class App(AdaptTab, CompareTab, InspectTab, TrainTab, ResultsTab):
    """The whole page: every tab's handlers (also the page's API endpoints) and its layout."""

    def build(self) -> gr.Blocks:
        found = self.checkpoints()
        default = self.default_checkpoint(found)
        with PageBlocks(title="CMRL: compositional meta-RL", delete_cache=(1800, 3600)) as demo:
            gr.Markdown(
                "# CMRL: type a goal, watch the arm adapt, see the routing\n"
                "Compositional meta-RL on Meta-World: a PEARL context encoder, conditioned also on "
                "the goal text, infers a context *z* that drives the routing between the modules "
                "of a soft-modular SAC policy.")
            if not found:
                gr.Markdown("> **No checkpoint found** in `checkpoints/` or `runs/`. Train one in "
                            "the **Train** tab (or `python -m cmrl train --agent cmrl --steps 20000 "
                            "--run-dir runs/demo`), then press ↻ next to the checkpoint list.")
            known_state = gr.State({"ckpts": found})
            with gr.Tabs():
                with gr.Tab("Adapt", id="adapt"):
                    adapt = self._adapt_tab(found)
                with gr.Tab("Compare goals", id="compare"):
                    compare = self._compare_tab(found, default)
                with gr.Tab("Routing inspector", id="inspect"):
                    inspect_ck = self._inspect_tab(found, default)
                with gr.Tab("Train", id="train"):
                    train = self._train_tab()
                with gr.Tab("Results", id="results"):
                    results = self._results_tab()
            ck_dropdowns = [adapt, compare, inspect_ck]
            timer = gr.Timer(2.0)
            timer.tick(self.train_refresh, [train["run"], train["shown"], known_state],
                       [train["table"], train["run"], train["curves"], train["status"],
                        train["log"], *ck_dropdowns, train["progress"], train["shown"],
                        known_state],
                       show_progress="hidden", concurrency_limit=None, api_name="train_refresh")
            demo.load(self.results, [results["protocol"], results["benchmark"]],
                      [results["md"], results["bars"], results["curves"], results["table"]],
                      api_visibility="private")
        return demo


def build(**kwargs) -> gr.Blocks:
    """The whole page (see `App` for the keyword arguments: checkpoint roots, runs dir, results
    root, a default checkpoint, hosted mode, a step cap)."""
    return App(**kwargs).build()


def configure_runtime() -> None:
    """One torch thread per rollout: several users' rollouts share the cores. Few malloc arenas
    (`_limit_malloc_arenas`). The page's own log (refused inputs, one line each; failed rollouts
    with their traceback) goes to stderr."""
    import torch

    torch.set_num_threads(int(os.environ.get("CMRL_APP_TORCH_THREADS", "1")))
    _limit_malloc_arenas(int(os.environ.get("MALLOC_ARENA_MAX", "2")))
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _limit_malloc_arenas(n: int) -> None:
    """glibc gives new threads malloc arenas of their own (up to 8 per core), and the memory freed
    in each stays resident. Rollout threads come and go: measured here, 60 rollouts 4 at a time
    left the server at 2.7 GB with the default and 1.5 GB with 2 arenas (1.2 GB with
    MALLOC_ARENA_MAX=2 set before start, as scripts/run_app.sh does). No-op off glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, n)
    except (OSError, AttributeError):
        pass


def launch(demo: gr.Blocks | None = None, **kwargs):
    """Queue and session settings for a public page, then serve (GRADIO_SERVER_NAME / _PORT are
    honoured by gradio itself; 127.0.0.1:7860 by default)."""
    configure_runtime()
    demo = demo or build()
    demo.queue(default_concurrency_limit=ROLLOUT_CONCURRENCY, max_size=QUEUE_SIZE)
    kwargs.setdefault("state_session_capacity", STATE_SESSIONS)
    return demo.launch(css=CSS, **kwargs)
