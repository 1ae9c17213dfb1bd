"""The demo UI. Adapt: type a goal, watch the arm adapt, see the routing live.

Only `cmrl`'s public functions are called here. Rollouts run in one dedicated thread per request
(an EGL context belongs to the thread that made it current) and reach the page through a queue.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import gradio as gr

import cmrl
from cmrl.tasks import ML4_TEST, ML4_TRAIN, all_env_names

from .figures import posterior_figure, routing_figure

ROOT = Path(__file__).resolve().parents[1]
SCENES = list(ML4_TRAIN + ML4_TEST) + [e for e in all_env_names() if e not in ML4_TRAIN + ML4_TEST]
EXAMPLES = ["close the window", "open the window", "open the drawer", "close the drawer"]


def find_checkpoints() -> list[str]:
    found = []
    for base in (ROOT / "checkpoints", ROOT / "runs"):
        found += sorted(str(p.parent.relative_to(ROOT)) for p in base.rglob("config.json")
                        if (p.parent / "model.safetensors").exists())
    return found


def _threaded(gen_fn, stop: threading.Event):
    """Run a generator in its own thread; yield its items here."""
    q: queue.Queue = queue.Queue(maxsize=4)
    done = object()

    def work():
        try:
            for item in gen_fn():
                q.put(item)
                if stop.is_set():
                    break
        except Exception as e:  # surfaced in the UI below
            q.put(e)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, Exception):
            raise item
        yield item


def run_adapt(checkpoint, scene, goal, variation, episodes):
    if not checkpoint:
        raise gr.Error("No checkpoint: train one first (python -m cmrl train ...) or pick one.")
    try:
        variation = int(variation)
        agent = cmrl.load_agent(ROOT / checkpoint)
        goal = cmrl.text_encoders.validate_goal_text(goal)
    except (ValueError, TypeError, cmrl.CheckpointError, cmrl.GoalTextError) as e:
        raise gr.Error(str(e))
    stop = threading.Event()
    successes: list[bool] = []
    try:
        for rec in _threaded(lambda: agent.rollout(scene, goal, variation=variation,
                                                   adaptation_episodes=int(episodes),
                                                   render=True, stop=stop), stop):
            if rec.done:
                successes.append(rec.episode_success)
            if rec.t % 5 == 0 or rec.done:
                summary = (f"episode {rec.episode + 1} ({rec.phase}), step {rec.t}: reward "
                           f"{rec.reward:.2f}, return {rec.episode_return:.1f}, success so far "
                           f"{rec.episode_success}; finished episodes: "
                           + ", ".join("✓" if s else "✗" for s in successes))
                yield (rec.frame, routing_figure(rec.routing, f"{agent.kind} actor routing"),
                       posterior_figure(rec.z_mean, rec.z_std, rec.num_transitions), summary)
    finally:
        stop.set()


def build() -> gr.Blocks:
    ckpts = find_checkpoints()
    with gr.Blocks(title="CMRL: compositional meta-RL") as demo:
        gr.Markdown("# CMRL: type a goal, watch the Sawyer arm adapt\n"
                    + ("" if ckpts else "**No checkpoint found.** Train one with "
                       "`python -m cmrl train --agent cmrl --steps 20000 --run-dir runs/demo`, "
                       "then reload this page."))
        with gr.Row():
            checkpoint = gr.Dropdown(ckpts, value=ckpts[0] if ckpts else None, label="checkpoint",
                                     allow_custom_value=True)
            scene = gr.Dropdown(SCENES, value="window-close-v3", label="scene")
            variation = gr.Number(0, label="goal variation (0-49)", precision=0)
            episodes = gr.Slider(1, 5, value=2, step=1, label="adaptation episodes")
        goal = gr.Textbox("close the window", label="goal description")
        gr.Examples(EXAMPLES, inputs=goal)
        run = gr.Button("Run", variant="primary")
        with gr.Row():
            frame = gr.Image(label="rollout", height=320)
            with gr.Column():
                routing = gr.Plot(label="routing")
                posterior = gr.Plot(label="context posterior")
        status = gr.Markdown()
        ev = run.click(run_adapt, [checkpoint, scene, goal, variation, episodes],
                       [frame, routing, posterior, status], concurrency_limit=2,
                       api_name="adapt")
        gr.Button("Cancel").click(None, cancels=[ev])
    return demo
