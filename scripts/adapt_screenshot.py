"""The README's picture: the real app (`python app.py`; its Adapt tab opens on
checkpoints/ml1/reach-v3/cmrl) served in a process of its own, driven by a headless browser
(Debian chromium + Playwright) through an Adapt run, captured while it streams.

    MUJOCO_GL=egl .venv/bin/python scripts/adapt_screenshot.py [--out assets/adapt_tab.png]
        [--scene reach-v3] [--goal "reach the goal position"] [--episodes 3] [--after 25]
        [--width 1100]

Once the first routing heatmap is drawn it waits AFTER seconds, then pauses the server (SIGSTOP),
so that the page, which lags the stream on a busy CPU, settles on a moment mid-rollout. It then takes
the screenshot (scene controls down to the posterior), resumes and stops the server, and writes a
palette PNG scaled to WIDTH pixels (small enough to check in).
"""
from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.adapt_tab import SCENE_LABEL  # noqa: E402
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> subprocess.Popen:
    """`python app.py` on 127.0.0.1:port, once it accepts connections."""
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError("app.py did not start serving within 300 s")


def capture(url: str, server: subprocess.Popen, scene: str, goal: str, episodes: int,
            after: float, chromium: str) -> bytes:
    """PNG bytes of the Adapt tab, `after` seconds into the stream of a rollout of `episodes`
    adaptation episodes, the server paused meanwhile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(300_000)
            page.goto(url, wait_until="domcontentloaded")
            scene_box = page.get_by_label(SCENE_LABEL)
            scene_box.fill(scene)
            scene_box.press("Enter")
            page.get_by_label("goal description (free text)").fill(goal)
            n_box = page.get_by_role("spinbutton", name="adaptation episodes")
            n_box.fill(str(episodes))
            n_box.press("Enter")
            top = max(0.0, scene_box.bounding_box()["y"] - 70)  # the label above it: two lines
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_selector(".js-plotly-plot g.heatmaplayer image")
            time.sleep(after)
            server.send_signal(signal.SIGSTOP)
            try:
                # the page works through what it has received; then the status line (episode,
                # step) stands still (the whole page does not: gradio's timers tick on)
                last, still = None, 0
                while still < 3:
                    time.sleep(2)
                    text = page.evaluate("() => (document.body.innerText.match("
                                         "/Episode \\d+\\/\\d+[^\\n]*step \\d+\\/\\d+/) || [''])[0]")
                    still, last = (still + 1, last) if text and text == last else (0, text)
                plots = page.locator(".js-plotly-plot >> visible=true")  # routing, posterior
                boxes = [page.locator("#frame").bounding_box()] + [
                    plots.nth(i).bounding_box() for i in range(plots.count())]
                bottom = max(b["y"] + b["height"] for b in boxes) + 10
                return page.screenshot(clip={"x": 0, "y": top, "width": 1280,
                                             "height": bottom - top}, full_page=True)
            finally:
                server.send_signal(signal.SIGCONT)
        finally:
            browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets/adapt_tab.png")
    ap.add_argument("--scene", default="reach-v3")
    ap.add_argument("--goal", default="reach the goal position")
    ap.add_argument("--episodes", type=int, default=3, help="adaptation episodes of the run")
    ap.add_argument("--after", type=float, default=25.0,
                    help="seconds after the first heatmap at which the server is paused")
    ap.add_argument("--width", type=int, default=1100, help="width of the written PNG, pixels")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    if not Path(args.chromium).is_file():
        sys.exit(f"no chromium at {args.chromium} (`bash scripts/setup.sh --dev` installs it)")
    from PIL import Image

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a kill still resumes and stops the server
    port = _free_port()
    server = serve(port)
    try:
        png = capture(f"http://127.0.0.1:{port}/", server, args.scene, args.goal, args.episodes,
                      args.after, args.chromium)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    im = Image.open(io.BytesIO(png)).convert("RGB")
    im = im.resize((args.width, round(im.height * args.width / im.width)), Image.LANCZOS)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out}: {im.width} x {im.height}, {out.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
