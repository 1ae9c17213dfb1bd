"""The Compare goals tab: one scene and goal variation, two goal texts side by side, to see what
the words alone change in the routing and the behaviour."""

from __future__ import annotations

import queue

import gradio as gr

from .adapt import RolloutWorker, View, drain, routing_comparison
from .base import ROLLOUT_CONCURRENCY, PageBase, page_error, session_key
from .common import InputError
from .inputs import SliderInput


class CompareTab(PageBase):
    def compare(self, checkpoint, scene, goal_a, goal_b, variation, camera, episodes, horizon,
                request: gr.Request):
        try:
            agent = self._agent(checkpoint)
            spec_a = self._rollout_spec(scene, goal_a, variation, camera, episodes, 0, horizon, 224,
                                        "Goal A")
            spec_b = self._rollout_spec(scene, goal_b, variation, camera, episodes, 0, horizon, 224,
                                        "Goal B")
        except InputError as e:
            raise page_error(e)
        spec_a.videos = spec_b.videos = False
        if not agent.uses_text:
            gr.Warning(f"A {agent.kind} agent does not read goal texts: the two sides differ only "
                       "by chance. Pick a checkpoint that reads the text (cmrl, care) to see what "
                       "the words change.")
        self._busy_note()
        session = session_key(request, "compare")
        stop = self.sessions.start(session)
        q: queue.Queue = queue.Queue(maxsize=128)
        done = self.sessions.finisher(session, stop, workers=2)
        workers = {t: RolloutWorker(agent, s, q, stop, tag=t, on_exit=done)
                   for t, s in (("A", spec_a), ("B", spec_b))}
        views = {"A": View(agent, spec_a), "B": View(agent, spec_b)}
        for w in workers.values():
            w.start()
        try:
            yield (None, gr.skip(), "building the scene…", None, gr.skip(), "building the scene…",
                   "running…")
            ended: set[str] = set()
            while len(ended) < 2:
                events = drain(q, 0.5)
                if not events:
                    if not any(w.is_alive() for w in workers.values()) and q.empty():
                        break
                    continue
                for ev in events:
                    if ev.kind == "end":
                        ended.add(ev.tag)
                    elif ev.kind == "error":
                        raise self._rollout_error(ev.error)
                    else:
                        views[ev.tag].add(ev)
                out = []
                for tag in ("A", "B"):
                    v = views[tag]
                    if v.last is None:
                        out += [gr.skip(), gr.skip(), "building the scene…"]
                        continue
                    figs = v.figures_due()
                    out += [v.new_frame() or gr.skip(), v.routing() if figs else gr.skip(),
                            v.status()]
                    if figs:
                        v.mark_figures()
                yield tuple(out) + ("running…",)
            a, b = views["A"], views["B"]
            outcome = (f"**Goal A** “{spec_a.goal}”: {a.summary()}  \n"
                       f"**Goal B** “{spec_b.goal}”: {b.summary()}  \n{routing_comparison(a, b)}")
            yield (gr.skip(), a.routing() if a.last is not None else gr.skip(),
                   a.status(done=True) if a.last is not None else "no steps",
                   gr.skip(), b.routing() if b.last is not None else gr.skip(),
                   b.status(done=True) if b.last is not None else "no steps", outcome)
        finally:
            self.sessions.finish(session, stop)
            for v in views.values():
                v.close()

    def cancel_compare(self, request: gr.Request) -> str:
        return self._cancel(request, "compare")

    def _compare_tab(self, found, default):
        gr.Markdown("The same scene and goal variation, two goal descriptions side by side: see "
                    "how the words alone change the routing and the behaviour.")
        ck = self._ckpt_row(found, default)
        with gr.Row():
            scene, variation, camera = self._scene_controls("scene")
            episodes = SliderInput(1, 5, value=2, step=1, label="adaptation episodes")
            horizon = SliderInput(10, 500, value=self.checkpoint_horizon(default) or 200, step=10,
                                  label="episode length")
        ck.change(self.horizon_update, ck, horizon, api_visibility="private",
                  show_progress="hidden")
        with gr.Row():
            goal_a = gr.Textbox("open the window", label="goal A")
            goal_b = gr.Textbox("close the window", label="goal B")
        with gr.Row():
            run = gr.Button("Compare", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        outcome = gr.Markdown()
        columns = []
        with gr.Row():
            for side in ("A", "B"):
                with gr.Column():
                    columns.append((gr.Image(label=f"goal {side}", format="jpeg", height=300,
                                             interactive=False, buttons=[], elem_classes="cmp-frame"),
                                    gr.Markdown(elem_classes="small-md"),
                                    gr.Plot(label=f"routing, goal {side}")))
        (frame_a, status_a, routing_a), (frame_b, status_b, routing_b) = columns
        ev = run.click(self.compare, [ck, scene, goal_a, goal_b, variation, camera, episodes,
                                      horizon],
                       [frame_a, routing_a, status_a, frame_b, routing_b, status_b, outcome],
                       concurrency_limit=ROLLOUT_CONCURRENCY, concurrency_id="rollout",
                       api_name="compare")
        cancel.click(self.cancel_compare, None, None, cancels=[ev], api_visibility="private")
        return ck
