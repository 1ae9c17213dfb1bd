"""The page's memory, by part and over a visit, measured on this machine:

- **parts**: in a fresh process, the resident memory each part adds when it is loaded in the order
  the page loads them: Python, torch, gradio, the page built (all tabs, no request yet), one
  checkpoint in the agent cache, its text encoder, a Meta-World env, its renderer (first frame),
  four more envs with renderers (as under concurrent rollouts), and 50 gradio sessions;
- **server**: a real server process (`python app.py` as scripts/run_app.sh starts it), its resident
  memory after start-up, after one rollout, at its peak while 6 rollouts are asked for at once
  (4 run, 2 wait: `ROLLOUT_CONCURRENCY`), a few seconds after they end, and the same for each
  further wave (`--waves`, 2 by default);
  with what the server still holds then (its own inventory: rollout threads, open envs, cached
  agents, gradio sessions and iterators); then what a new session adds (anonymous calls: 50 of the
  Results endpoint, 25 tiny rollouts; gradio keeps what each one showed in its state).

    python scripts/page_memory.py [--checkpoint checkpoints/ml4/cmrl] [--horizon 100] [--size 224]
                                  [--waves 2] [--skip-parts] [--json OUT]

Figures are RSS (VmRSS) in MB. They are recorded in docs/public_page.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile import call, rss_mb, server_process  # noqa: E402

CONCURRENT = 6
SESSIONS = 50
SETTLE_S = 5.0
"""Seconds after the last rollout ends before the 'after' figure is read."""


def adapt_args(checkpoint: str, horizon: int, size: int, variation: int = 0) -> list:
    return [checkpoint, "window-close-v3", "close the window", variation, "corner", 1, 0, horizon,
            size]


# -- parts -------------------------------------------------------------------------------------------
def parts(checkpoint: Path, size: int) -> dict:
    """Run in a fresh process: RSS after each part is loaded, and what each one added."""
    steps: list[tuple[str, float]] = [("python", rss_mb())]

    def mark(name):
        gc.collect()
        steps.append((name, rss_mb()))

    import torch  # noqa: F401

    torch.set_num_threads(1)
    mark("torch")
    import gradio  # noqa: F401

    mark("gradio")
    import cmrl  # noqa: F401
    from app.ui import App, configure_runtime

    mark("cmrl and the app's modules")
    configure_runtime()
    work = Path(tempfile.mkdtemp(prefix="cmrl-mem-"))
    (work / "none").mkdir()
    app = App(checkpoint_roots=[work / "none"], runs_dir=work / "runs", extra_roots=[])
    demo = app.build()
    mark("page built (all tabs, no checkpoint loaded)")
    agent = cmrl.load_agent(checkpoint)
    mark("one checkpoint loaded (agent cache)")
    if agent.uses_text:
        agent.encode_goal("close the window")
        mark("its text encoder")
    from cmrl.envs.metaworld_env import make_scene

    env, variations = make_scene("window-close-v3", horizon=100, render=True, camera="corner",
                                 size=size)
    env.reset(variations[0])
    mark("Meta-World env (reset, no frame yet)")
    env.render()
    mark("renderer (first frame)")
    more = []
    for task in ("drawer-open-v3", "drawer-close-v3", "window-open-v3", "window-close-v3"):
        e, v = make_scene(task, horizon=100, render=True, camera="corner", size=size)
        e.reset(v[0])
        e.render()
        more.append(e)
    mark("4 more envs with renderers")
    for e in more + [env]:
        e.close()
    del more, env
    mark("all 5 envs closed")
    release_memory()
    mark("malloc_trim")
    from gradio.state_holder import SessionState

    sessions = [SessionState(demo) for _ in range(50)]
    for s in sessions:  # what a session holds once its first request has touched every input
        for fn in demo.fns.values():
            for block in fn.inputs:
                s[block._id] = block
    mark("50 gradio sessions")
    out = {"steps": [{"part": n, "rss_mb": round(r, 1)} for n, r in steps]}
    out["added_mb"] = {n: round(r - steps[i - 1][1], 1) for i, (n, r) in enumerate(steps) if i}
    return out


def release_memory() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- server ------------------------------------------------------------------------------------------
def serve(port: int, work: Path, checkpoint_root: Path, inventory: Path) -> None:
    """The server process: the page as `python app.py --allow-root DIR` builds it; SIGUSR1 writes
    its inventory (what it still holds) to `inventory`."""
    from app.ui import App, launch

    app = App(runs_dir=work / "runs", extra_roots=[checkpoint_root])
    app.jobs.python = "/bin/true"
    demo = app.build()

    def dump(*_):
        from cmrl.envs import metaworld_env

        gc.collect()
        envs = sum(1 for o in gc.get_objects() if isinstance(o, metaworld_env.TaskEnv))
        holder = demo.state_holder
        info = {
            "rss_mb": round(rss_mb(), 1),
            "rollout_threads": sum(t.name.startswith("rollout-") for t in threading.enumerate()),
            "threads": threading.active_count(),
            "open_envs": envs,
            "rollouts_active": app.sessions.active(),
            "agents_cached": len(app.agents._items),
            "gradio_sessions": len(getattr(holder, "session_data", {})),
            "gradio_iterators": len(getattr(demo, "server_app", None).iterators)
            if getattr(demo, "server_app", None) else None,
        }
        inventory.write_text(json.dumps(info))

    signal.signal(signal.SIGUSR1, dump)
    launch(demo, server_name="127.0.0.1", server_port=port, quiet=True)


def inventory(server: subprocess.Popen, path: Path) -> dict:
    path.unlink(missing_ok=True)
    server.send_signal(signal.SIGUSR1)
    deadline = time.time() + 60
    while time.time() < deadline:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        time.sleep(0.1)
    return {}


def server_figures(checkpoint: Path, horizon: int, size: int, waves: int = 2) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cmrl-mem-"))
    inv = work / "inventory.json"
    ck = str(checkpoint)
    fig: dict = {"checkpoint": display(checkpoint), "horizon": horizon, "size": size,
                 "concurrent": CONCURRENT}
    with server_process(__file__, [work, checkpoint.parent, inv], work) as server:
        url, pid = server.url, server.proc.pid
        time.sleep(1)
        fig["startup_mb"] = round(rss_mb(pid), 1)
        a = call(url, "adapt", adapt_args(ck, horizon, size))
        assert a.kind == "ok", a
        time.sleep(SETTLE_S)
        fig["one_rollout_mb"] = round(rss_mb(pid), 1)
        fig["after_one_inventory"] = inventory(server.proc, inv)

        for wave in range(1, waves + 1):
            peak, stop = [0.0], threading.Event()

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], rss_mb(pid))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample)
            sampler.start()
            t0 = time.time()
            with ThreadPoolExecutor(CONCURRENT) as pool:
                kinds = list(pool.map(lambda v: call(url, "adapt", adapt_args(ck, horizon, size, v)
                                                     ).kind, range(CONCURRENT)))
            seconds = time.time() - t0
            time.sleep(SETTLE_S)
            stop.set()
            sampler.join()
            fig[f"wave{wave}"] = {"ok": kinds.count("ok"), "seconds": round(seconds, 1),
                                  "peak_mb": round(peak[0], 1), "after_mb": round(rss_mb(pid), 1),
                                  "inventory": inventory(server.proc, inv)}
        fig["peak_mb"] = max(fig[f"wave{w}"]["peak_mb"] for w in range(1, waves + 1))
        fig["after_mb"] = fig[f"wave{waves}"]["after_mb"]
        fig["after_vs_one_rollout"] = round(fig["after_mb"] / fig["one_rollout_mb"] - 1, 3)

        # Session state: each anonymous API call is a new gradio session holding what it showed.
        # One call first, so that what the endpoint loads once is not counted.
        fig["sessions"] = {}
        for api, args, n in (("results", ["cmrl", None], SESSIONS),
                             ("adapt", adapt_args(ck, 10, 64), SESSIONS // 2)):
            assert call(url, api, args).kind == "ok"
            time.sleep(SETTLE_S)
            before = rss_mb(pid)
            for _ in range(n):
                assert call(url, api, args).kind == "ok"
            time.sleep(SETTLE_S)
            fig["sessions"][api] = {"calls": n,
                                    "mb_per_session": round((rss_mb(pid) - before) / n, 2),
                                    "inventory": inventory(server.proc, inv)}
    fig["server_log_tracebacks"] = server.log.read_text(errors="replace").count("Traceback")
    return fig


def display(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/ml4/cmrl")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--waves", type=int, default=2, help="waves of 6 concurrent rollouts")
    p.add_argument("--skip-parts", action="store_true")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--parts-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(int(args.serve[0]), Path(args.serve[1]), Path(args.serve[2]),
                     Path(args.serve[3]))
    checkpoint = (ROOT / args.checkpoint).resolve()
    if args.parts_child:
        print(json.dumps(parts(checkpoint, args.size)))
        return {}
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    figures: dict = {"cpu_count": os.cpu_count()}
    if not args.skip_parts:
        out = subprocess.run([sys.executable, __file__, "--parts-child", "--checkpoint",
                              str(checkpoint), "--size", str(args.size)], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True)
        figures["parts"] = json.loads(out.stdout.strip().splitlines()[-1])
    figures["server"] = server_figures(checkpoint, args.horizon, args.size, args.waves)
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
