"""The Adapt tab: type a goal, watch the arm adapt (streamed frames, routing, posterior, episode
videos). The rollout itself runs in `adapt.py`'s worker thread."""

from __future__ import annotations

import queue

import gradio as gr

from cmrl.agent_kinds import agent_kind
from cmrl.envs.tasks import GOAL_TEXTS, canonical_goal_text

from .adapt import RolloutWorker, View, clean_old_videos, drain
from .base import ROLLOUT_CONCURRENCY, PageBase, page_error, session_key
from .common import FRAME_SIZES, GOAL_EXAMPLES, MAX_EPISODES, SCENES, InputError
from .inputs import DropdownInput, SliderInput

CANONICAL_TEXTS = {t for texts in GOAL_TEXTS.values() for t in texts}
SCENE_LABEL = ("scene (ML4 tasks first, window-close held out; in reach, push and pick-place the "
               "goal position is hidden from the agent; reach shows it as a red ball)")


class AdaptTab(PageBase):
    def adapt(self, checkpoint, scene, goal, variation, camera, episodes, eval_episodes, horizon,
              size, request: gr.Request):
        try:
            agent = self._agent(checkpoint)
            spec = self._rollout_spec(scene, goal, variation, camera, episodes, eval_episodes,
                                      horizon, size)
        except InputError as e:
            raise page_error(e)
        note = agent_kind(agent.kind).goal_text_note
        if note:
            gr.Info(note)
        self._busy_note()
        session = session_key(request, "adapt")
        stop = self.sessions.start(session)
        q: queue.Queue = queue.Queue(maxsize=64)
        worker = RolloutWorker(agent, spec, q, stop, on_exit=self.sessions.finisher(session, stop))
        view = View(agent, spec)
        clean_old_videos()
        worker.start()
        try:
            yield (None, gr.skip(), gr.skip(), "building the scene and its renderer…", None, [], [])
            ended = False
            while not ended:
                events = drain(q, 0.5)
                if not events:
                    if not worker.is_alive() and q.empty():
                        break
                    continue
                new_video, error = False, None
                for ev in events:
                    if ev.kind == "end":
                        ended = True
                    elif ev.kind == "error":
                        error = ev.error
                    else:
                        view.add(ev)
                        new_video |= ev.kind == "video"
                if error is not None:
                    raise self._rollout_error(error)
                if view.last is None:
                    continue
                figs = view.figures_due()
                out = (view.new_frame() or gr.skip(), view.routing() if figs else gr.skip(),
                       view.posterior() if figs else gr.skip(), view.status(),
                       (view.videos()[-1][0] if view.videos() else None) if new_video else gr.skip(),
                       view.videos() if new_video else gr.skip(),
                       view.table() if new_video else gr.skip())
                if figs:
                    view.mark_figures()
                yield out
            cancelled = stop.is_set() and len(view.episodes) < view.total_episodes
            if view.last is not None:
                yield (gr.skip(), view.routing(), view.posterior(),
                       view.status(done=True, cancelled=cancelled) + "  \n**Summary:** "
                       + view.summary(), gr.skip(), view.videos(), view.table())
        finally:
            self.sessions.finish(session, stop)
            view.close()

    def cancel(self, request: gr.Request) -> str:
        """Stops this page's Adapt rollout (the thread stops within a step)."""
        return self._cancel(request, "adapt")

    def _adapt_tab(self, found):
        default, opening_scene = self.adapt_opening(found)
        ck = self._ckpt_row(found, default)
        with gr.Row():
            scene, variation, camera = self._scene_controls(SCENE_LABEL, opening_scene)
            episodes = SliderInput(0, MAX_EPISODES, value=3, step=1, label="adaptation episodes")
        goal = gr.Textbox(canonical_goal_text(opening_scene), label="goal description (free text)",
                          max_lines=2)
        gr.Examples([[g] for g in GOAL_EXAMPLES], inputs=goal, label="example goals")
        with gr.Accordion("more settings", open=False):
            with gr.Row():
                eval_eps = SliderInput(0, 5, value=1, step=1,
                                     label="evaluation episodes (posterior mean, deterministic)")
                horizon = SliderInput(10, 500, value=self.checkpoint_horizon(default) or 200,
                                      step=10, label="episode length (steps)",
                                      info="default: the checkpoint's training horizon")
                size = DropdownInput(list(FRAME_SIZES), value=224, label="frame size (px)")
        with gr.Row():
            run = gr.Button("Run", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        status = gr.Markdown("Press **Run** to roll the agent out.")
        with gr.Row():
            frame = gr.Image(label="rollout", format="jpeg", height=360, elem_id="frame",
                             interactive=False, buttons=[])
            with gr.Column():
                routing = gr.Plot(label="routing (updated every 5 env steps)")
                posterior = gr.Plot(label="context posterior")
        with gr.Row():
            video = gr.Video(label="last finished episode (mp4)", interactive=False, loop=True,
                             height=320)
            gallery = gr.Gallery(label="all episodes (click one to play it)", columns=4,
                                 height=320, interactive=False, object_fit="contain")
        table = gr.Dataframe(headers=["episode", "phase", "success", "return", "steps"],
                             label="per-episode summary", interactive=False)
        ev = run.click(self.adapt, [ck, scene, goal, variation, camera, episodes, eval_eps, horizon,
                                    size],
                       [frame, routing, posterior, status, video, gallery, table],
                       concurrency_limit=ROLLOUT_CONCURRENCY, concurrency_id="rollout",
                       api_name="adapt")
        cancel.click(self.cancel, None, None, cancels=[ev], api_name="cancel")
        ck.change(self.horizon_update, ck, horizon, api_name="checkpoint_horizon",
                  show_progress="hidden")
        scene.change(lambda s, g: canonical_goal_text(s) if (not g or g in CANONICAL_TEXTS)
                     and s in SCENES else gr.skip(), [scene, goal], goal, api_visibility="private",
                     show_progress="hidden")
        return ck
