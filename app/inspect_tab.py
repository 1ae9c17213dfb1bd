"""The Routing inspector tab: mean actor routing per task, routing similarity between tasks, and the
meta-train task each task lands nearest to (`cmrl.experiments.routing_analysis` does the work)."""

from __future__ import annotations

import gradio as gr

from cmrl.agent_kinds import agent_kind
from cmrl.envs.tasks import canonical_goal_text
from cmrl.experiments.routing_analysis import (METRICS, nearest_tasks, similarity_matrix,
                                               task_context)

from .base import ROLLOUT_CONCURRENCY, PageBase, page_error, session_key
from .common import ML4_TASKS, SCENES, InputError, parse_choice, parse_int, parse_scene, shown
from .figures import mean_routing_figure, message_figure, similarity_figure
from .inputs import DropdownInput, RadioInput, SliderInput


class InspectTab(PageBase):
    def inspect(self, checkpoint, tasks, episodes, variations, horizon, metric,
                request: gr.Request):
        try:
            agent = self._agent(checkpoint)
            if isinstance(tasks, str):
                tasks = [tasks]
            if tasks is not None and not isinstance(tasks, list):
                raise InputError(f"Tasks must be a list of scene names, got {shown(tasks)}.")
            if len(tasks or []) > 12:
                raise InputError("Pick at most 12 tasks.")
            tasks = list(dict.fromkeys(parse_scene(t) for t in (tasks or [])))
            if len(tasks) < 1:
                raise InputError("Pick at least one task (two or more for a similarity matrix).")
            episodes = parse_int(episodes, "Episodes per variation", 1, 5)
            variations = parse_int(variations, "Goal variations per task", 1, 5)
            horizon = parse_int(horizon, "The episode length", 10, 500)
            metric = parse_choice(metric, "The similarity", list(METRICS))
        except InputError as e:
            raise page_error(e)
        if not agent.has_routing:
            raise page_error(InputError(f"{agent_kind(agent.kind).no_routing_note}: nothing to "
                                    "inspect. Pick a cmrl or sm checkpoint."))
        session = session_key(request, "inspect")
        stop = self.sessions.start(session)
        profiles, contexts, rows = {}, {}, []
        train_tasks = list(agent.info.get("train_tasks", []))
        try:
            for i, task in enumerate(tasks):
                yield (gr.skip(), gr.skip(), gr.skip(),
                       f"rolling out {task} ({i + 1}/{len(tasks)}): {variations} variation(s) x "
                       f"(1 text-only + {episodes} adaptation + 1 adapted episode) of {horizon} "
                       "steps…")
                try:
                    res = task_context(agent, task, canonical_goal_text(task), episodes,
                                       list(range(variations)), horizon, stop=stop)
                except ValueError as e:  # NoRoutingError included
                    raise page_error(e)
                if stop.is_set():
                    break
                if res.routing_adaptation is None:
                    raise page_error(InputError(f"{agent_kind(agent.kind).no_routing_note}: nothing "
                                            "to inspect. Pick a cmrl or sm checkpoint."))
                profiles[task], contexts[task] = res.routing_adaptation, res
                nearest = nearest_tasks(contexts, train_tasks, metric)
                rows = [_inspect_row(t, c, nearest[t]) for t, c in contexts.items()]
                sim = (similarity_figure(*similarity_matrix(profiles, metric), metric)
                       if len(profiles) > 1 else message_figure("the similarity matrix needs two "
                                                                "tasks or more", 420))
                yield (mean_routing_figure(profiles), sim, rows,
                       f"{len(profiles)}/{len(tasks)} tasks done")
            yield (gr.skip(), gr.skip(), rows,
                   f"**Done.** Mean actor routing over every step of {episodes} adaptation "
                   f"episode(s) x {variations} goal variation(s) per task (goal text: the task's "
                   "canonical description). The table says which meta-train task each task's "
                   "routing and z are nearest to, from the goal text alone (a deterministic "
                   "episode at the prior) and after adaptation (one at the posterior), compared "
                   "with the meta-train tasks' own adapted routing and z (only those picked "
                   f"above: {', '.join(t for t in train_tasks if t in contexts) or 'none'}). "
                   f"Similarity: {metric} "
                   + {"cosine": "(cosine of the flattened routing)",
                      "centered-cosine": "(cosine of the flattened routing minus uniform routing "
                                         "1/n: +1 same favourite modules, -1 opposite)",
                      "jensen-shannon": "(1 - mean Jensen-Shannon divergence of corresponding "
                                        "routing rows, base 2)"}[metric])
        finally:
            self.sessions.finish(session, stop)

    def cancel_inspect(self, request: gr.Request) -> str:
        return self._cancel(request, "inspect")

    def _inspect_tab(self, found, default):
        gr.Markdown("Mean actor routing per task over a few episodes, and how similar the tasks' "
                    "routing is: which modules the tasks share (the compositional story).")
        ck = self._ckpt_row(found, default)
        with gr.Row():
            tasks = DropdownInput(SCENES, value=ML4_TASKS, multiselect=True, label="tasks")
            metric = RadioInput(list(METRICS), value="centered-cosine", label="similarity",
                              info="centered-cosine: cosine of the deviations from uniform "
                                   "routing (a plain cosine of near-uniform routings is ~1)")
        with gr.Row():
            episodes = SliderInput(1, 5, value=2, step=1, label="adaptation episodes per variation")
            variations = SliderInput(1, 5, value=1, step=1, label="goal variations per task")
            horizon = SliderInput(10, 500, value=self.checkpoint_horizon(default) or 100, step=10,
                                  label="episode length")
        ck.change(self.horizon_update, ck, horizon, api_visibility="private",
                  show_progress="hidden")
        with gr.Row():
            run = gr.Button("Inspect", variant="primary")
            cancel = gr.Button("Cancel", variant="stop")
        status = gr.Markdown()
        sim = gr.Plot(label="routing similarity")
        mean = gr.Plot(label="mean routing per task")
        table = gr.Dataframe(headers=["task", "goal text", "adaptation steps", "episodes",
                                      "success, text only", "success, adapted",
                                      "routing nearest (text only)", "routing nearest (adapted)",
                                      "z nearest (text only)", "z nearest (adapted)"],
                             label="where each task lands", interactive=False)
        ev = run.click(self.inspect, [ck, tasks, episodes, variations, horizon, metric],
                       [mean, sim, table, status], concurrency_limit=ROLLOUT_CONCURRENCY,
                       concurrency_id="rollout", api_name="inspect")
        cancel.click(self.cancel_inspect, None, None, cancels=[ev], api_visibility="private")
        return ck


def _inspect_row(task: str, c, nearest: dict) -> list:
    """One row of the inspector's table: successes, and the nearest meta-train task by routing and
    by z from the text alone and after adaptation."""
    def near(key):
        return nearest[key]["nearest"] if key in nearest else "-"

    return [task, c.goal_text, c.adaptation_steps, c.adaptation_episodes,
            f"{c.success_text:.2f}", f"{c.success_adapted:.2f}", near("routing_text"),
            near("routing_adapted"), near("z_text"), near("z_adapted")]
