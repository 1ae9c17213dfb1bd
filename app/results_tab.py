"""The Results tab: the shipped evaluation files (`results.py` reads them), as bars, curves and a
table; nothing is recomputed here."""

from __future__ import annotations

import gradio as gr

from .base import PageBase, page_error
from .common import InputError, display_path, parse_choice
from .figures import message_figure, return_curves_figure, success_bars_figure
from .inputs import RadioInput
from .results import load_results, table_rows


class ResultsTab(PageBase):
    def results(self, protocol, benchmark=None):
        names = tuple(self.results_roots)
        try:
            protocol = parse_choice(protocol or "cmrl", "The evaluation protocol",
                                    ("cmrl", "metaworld"))
            benchmark = parse_choice(benchmark or names[0], "The benchmark", names)
        except InputError as e:
            raise page_error(e)
        root = self.results_roots[benchmark]
        res = load_results(root, protocol)
        where = display_path(root)
        if res.empty:
            msg = (f"**No results shipped yet.** Nothing was found in `{where}/` (expected "
                   "`results.json` and/or run directories with `evaluation.json` and "
                   "`metrics.jsonl`, written by `python -m cmrl eval --json RUN/evaluation.json` "
                   "and `python -m cmrl report`).")
            if res.problems:
                msg += "\n\nProblems: " + "; ".join(res.problems)
            empty = message_figure("no shipped results", 300)
            return msg, empty, empty, []
        tasks = res.tasks()
        lines = [f"Results from `{where}/`" + (f" ({len(res.success)} agents)" if res.success
                                              else "") + ". Success: an evaluation episode with "
                 "`info['success']` at any step, after adaptation episodes; error bars: std over "
                 "seeds (n = seeds)."]
        if res.commands:
            lines.append("**Commands that produced these numbers:**")
            lines += [f"- {who}: `{cmd}`" for who, cmd in res.commands]
        lines += [f"> {n}" for n in res.notes]
        if res.problems:
            lines.append("Problems: " + "; ".join(res.problems))
        bars = (success_bars_figure({a: v for a, v in res.success.items()}, tasks, res.held_out,
                                    "success rate per task per agent (seed paper, Figure 4)")
                if res.success else message_figure("no evaluation files shipped", 300))
        curves = (return_curves_figure(res.curves, [t for t in tasks if any(
            t in run["returns"] for runs in res.curves.values() for run in runs)], res.held_out,
            res.x_label) if any(res.curves.values()) else message_figure(
            "no training curves (metrics.jsonl) shipped", 300))
        return "\n".join(lines), bars, curves, table_rows(res)

    def _results_tab(self):
        names = list(self.results_roots)
        gr.Markdown("From the evaluation files shipped in "
                    + ", ".join(f"`{display_path(r)}/`" for r in self.results_roots.values())
                    + " (nothing is recomputed here).")
        with gr.Row():
            protocol = RadioInput(["cmrl", "metaworld"], value="cmrl",
                                label="evaluation protocol")
            benchmark = RadioInput(names, value=names[0], label="benchmark")
            refresh = gr.Button("↻ reload", scale=0)
        md = gr.Markdown()
        bars = gr.Plot(label="success per task per agent")
        curves = gr.Plot(label="return over training")
        table = gr.Dataframe(headers=["agent", "task", "split", "zero-shot (text only)",
                                      "success (adapted)", "adaptation gain", "return", "n"],
                             label="table", interactive=False)
        outs = [md, bars, curves, table]
        refresh.click(self.results, [protocol, benchmark], outs, api_name="results")
        for choice in (protocol, benchmark):
            choice.change(self.results, [protocol, benchmark], outs, api_visibility="private")
        return {"protocol": protocol, "benchmark": benchmark, "md": md, "bars": bars,
                "curves": curves, "table": table}
