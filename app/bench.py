"""`python -m app.bench`: the app's speed through its real streaming path, on the machine at hand.

Starts the app in-process, then drives the Adapt endpoint with gradio_client (HTTP + server-sent
events + downloading every streamed frame, as a browser does) and prints:

- time from Run to the first rendered frame, warm (agent, text encoder and renderer loaded once);
- frames per second streamed at 224 px (distinct frames the client received / streaming time);
- wall time of a full 3-episode adaptation at horizon 200 (Run to the last update);
- for reference, the bare `TrainedAgent.rollout(render=True)` rate in one thread (no UI), and the
  load average, since other processes on the machine slow everything down.

    python -m app.bench [--checkpoint RUN] [--episodes 3] [--horizon 200] [--json out.json]

Without --checkpoint it uses the app's default checkpoint, or trains a tiny one in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TARGETS = {"first_frame_s": 1.5, "stream_fps": 25.0, "adaptation_wall_s": 30.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_checkpoint() -> str:
    import cmrl

    cfg = cmrl.RunConfig()
    cfg.train.steps, cfg.train.envs_per_task, cfg.train.warmup_steps = 120, 1, 0
    cfg.train.updates_per_step, cfg.train.eval_every, cfg.train.text_encoder = 0.1, 0, "minilm"
    cfg.train.checkpoint_every = 120
    cfg.benchmark.horizon = 20
    run = Path(tempfile.mkdtemp(prefix="cmrl-bench-")) / "cmrl"
    cmrl.train(cfg, run, progress=False)
    return str(run)


def _stream(client, http, checkpoint, episodes, horizon, size=224, scene="window-close-v3"):
    """One Run through the Adapt endpoint. Like a browser, every streamed frame is fetched over
    one keep-alive HTTP connection (gradio_client's own per-file download costs ~25 ms of CPU a
    file, more than the app spends making the frame)."""
    t0 = time.perf_counter()
    job = client.submit(checkpoint, scene, "close the window", 0, "corner", episodes, 0, horizon,
                        size, api_name="/adapt")
    first, frames, last_url, updates = None, 0, None, 0
    t_last_frame = None
    for out in job:
        updates += 1
        img = out[0]
        url = img.get("url") if isinstance(img, dict) else None
        if url and url != last_url:
            data = http.get(url).content
            if data[:2] != b"\xff\xd8":
                raise RuntimeError(f"frame {frames} is not a JPEG ({len(data)} bytes)")
            now = time.perf_counter()
            if first is None:
                first = now - t0
            frames += 1
            last_url = url
            t_last_frame = now
    wall = time.perf_counter() - t0
    fps = (frames - 1) / (t_last_frame - t0 - first) if frames > 1 else 0.0
    return {"first_frame_s": first, "frames": frames, "updates": updates, "stream_fps": fps,
            "wall_s": wall}


def bare_rollout_rate(agent, horizon: int, size: int = 224) -> float:
    n, start = 0, None
    for _ in agent.rollout("window-close-v3", "close the window", 0, adaptation_episodes=1,
                           eval_episodes=0, render=True, size=size, horizon=horizon):
        if start is None:
            start = time.perf_counter()
        n += 1
    return (n - 1) / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="run directory (default: the app's default checkpoint)")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    from gradio_client import Client

    from .common import AgentCache, default_checkpoint, find_checkpoints, resolve_path
    from .ui import build, configure_runtime, launch

    configure_runtime()
    ckpt = args.checkpoint or default_checkpoint(find_checkpoints())
    if ckpt is None:
        print("no checkpoint found: training a tiny one for the benchmark…", file=sys.stderr)
        ckpt = _tiny_checkpoint()
    load = os.getloadavg()
    demo = build(default=ckpt)
    _, url, _ = launch(demo, prevent_thread_lock=True, server_name="127.0.0.1",
                       server_port=_free_port(), quiet=True)
    try:
        import httpx

        client = Client(url, verbose=False, download_files=False)
        with httpx.Client() as http:
            _stream(client, http, ckpt, 1, 20)  # warm: agent, text encoder, renderer, code paths
            warm = [_stream(client, http, ckpt, 1, 30)["first_frame_s"] for _ in range(3)]
            full = _stream(client, http, ckpt, args.episodes, args.horizon)
    finally:
        demo.close()
    agent = AgentCache().get(resolve_path(ckpt))
    bare = bare_rollout_rate(agent, args.horizon)
    import torch

    figures = {
        "checkpoint": ckpt, "agent": agent.kind,
        "first_frame_s": min(warm), "first_frame_runs_s": [round(x, 3) for x in warm],
        "stream_fps": full["stream_fps"], "frames_streamed": full["frames"],
        "updates": full["updates"], "adaptation_wall_s": full["wall_s"],
        "adaptation": f"{args.episodes} episodes x {args.horizon} steps, 224 px",
        "bare_rollout_steps_per_s": bare, "load_average_at_start": [round(x, 2) for x in load],
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    print(f"checkpoint {ckpt} ({agent.kind}); {os.cpu_count()} CPUs; load average at start "
          f"{load[0]:.2f} (other processes slow every figure)")
    rows = [("Run -> first rendered frame (warm, best of 3)", figures["first_frame_s"], "s",
             "<=", TARGETS["first_frame_s"]),
            ("frames streamed per second at 224 px", figures["stream_fps"], "fps", ">=",
             TARGETS["stream_fps"]),
            (f"full adaptation ({figures['adaptation']})", figures["adaptation_wall_s"], "s", "<=",
             TARGETS["adaptation_wall_s"])]
    for label, value, unit, op, target in rows:
        ok = value <= target if op == "<=" else value >= target
        print(f"  {label:48s} {value:7.2f} {unit:4s} (target {op} {target}: "
              f"{'met' if ok else 'NOT met'})")
    print(f"  {'reference: bare rollout + render, no UI':48s} {bare:7.2f} steps/s")
    print(f"  frames streamed {full['frames']} of {args.episodes * args.horizon} steps "
          f"({full['updates']} updates)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
