"""What a hostile visitor sends: malformed inputs for every endpoint of the app, sent as raw HTTP
(so they may hold what gradio_client cannot encode, such as lone surrogates), and the server's
answer classified; and a page served in a process of its own, as scripts/run_app.sh serves it. Used
by tests/test_app_hostile.py, tests/test_public_page.py, scripts/hostile_probe.py and
scripts/page_memory.py.

An answer is `ok` (the input was usable and the call completed), `clean` (a gr.Error with the
app's own message) or `uncaught` (an exception the app did not turn into a message: gradio then
sends no message, or the HTTP call itself fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx

ROOT = Path(__file__).resolve().parents[1]

BAD_VALUES = [
    None, "", "   ", "abc", -1, 0, 10**400, 1e308, -1e308, float("nan"), float("inf"), True,
    [1, 2], {"a": 1}, [[[[[]]]]], "x" * 10_000, "\x00", "a\x00b", "\ud800", "close \udfff window",
    "\u200b\u200b", "/etc", "/etc/passwd", "../../../../etc", "/nonexistent/dir", "1e9999", "-5",
    "3.5", "NaN",
]
"""Values put in place of one (or two) of an endpoint's inputs."""


def endpoints(checkpoint: str) -> dict[str, list]:
    """Every public endpoint with a valid input list (tiny rollouts: 1 episode of 10 steps)."""
    return {
        "adapt": [checkpoint, "drawer-open-v3", "open the drawer", 0, "corner", 1, 0, 10, 64],
        "compare": [checkpoint, "drawer-open-v3", "open the drawer", "close the drawer", 0,
                    "corner", 1, 10],
        "inspect": [checkpoint, ["drawer-open-v3"], 1, 1, 10, "cosine"],
        "train_launch": ["pearl", "ml4", 100, 0, "none", "", "cpu", "fuzz-run", 10, 1, 0, 0.1,
                         0, 100],
        "train_recipe": ["quick", "ml4", 0, "cpu", "fuzz-recipe"],
        "train_estimate": ["quick", "ml4", "cpu"],
        "train_cancel": ["fuzz-run"],
        "train_stop": ["fuzz-run"],
        "train_resume": ["fuzz-run", 200, "cpu"],
        "train_refresh": ["fuzz-run"],
        "results": ["cmrl", None],  # protocol, benchmark (None: the first shipped)
    }


def malformed_inputs(checkpoint: str, n: int | None = None, seed: int = 0) -> list[tuple[str, list]]:
    """Each endpoint's valid inputs with one position replaced by each of BAD_VALUES, plus as many
    again with two positions replaced at random; `n`: a random sample of that many, every
    endpoint kept."""
    rng = random.Random(seed)
    single, double = [], []
    for api, args in endpoints(checkpoint).items():
        for i in range(len(args)):
            for bad in BAD_VALUES:
                single.append((api, args[:i] + [bad] + args[i + 1:]))
        for _ in range(len(args) * len(BAD_VALUES) // 4 if len(args) > 1 else 0):
            i, j = rng.sample(range(len(args)), 2)
            a = list(args)
            a[i], a[j] = rng.choice(BAD_VALUES), rng.choice(BAD_VALUES)
            double.append((api, a))
    cases = single + double
    if n is None or n >= len(cases):
        return cases
    by_api: dict[str, list[int]] = {}
    for k, (api, _) in enumerate(cases):
        by_api.setdefault(api, []).append(k)
    picked = {rng.choice(ks) for ks in by_api.values()}
    rest = [k for k in range(len(cases)) if k not in picked]
    return [cases[k] for k in sorted(picked) + rng.sample(rest, n - len(picked))]


@dataclass
class Answer:
    kind: str  # ok | clean | uncaught (| refused: an HTTP 400 with the page's own message)
    message: str | None = None


def call(url: str, api: str, data: list, timeout: float = 180.0) -> Answer:
    """POST the inputs to /gradio_api/call/<api>, read the event stream to its end."""
    base = url.rstrip("/")
    try:
        body = json.dumps({"data": data})  # ASCII-escaped: lone surrogates travel as \\udxxx
        r = httpx.post(f"{base}/gradio_api/call/{api}", content=body, timeout=timeout,
                       headers={"content-type": "application/json"})
        if r.status_code != 200:
            return Answer("uncaught", f"HTTP {r.status_code}: {r.text[:200]}")
        event = r.json()["event_id"]
        with httpx.stream("GET", f"{base}/gradio_api/call/{api}/{event}", timeout=timeout) as s:
            text = "".join(s.iter_text())
    except (httpx.HTTPError, ValueError, KeyError) as e:
        return Answer("uncaught", f"{type(e).__name__}: {e}")
    kind, data_line = None, None
    for line in text.splitlines():
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: ") and kind in ("complete", "error"):
            data_line = line[6:]
    if kind == "complete":
        return Answer("ok")
    if kind == "error":
        try:
            message = (json.loads(data_line) or {}).get("error") if data_line else None
        except ValueError:
            message = None
        return Answer("clean", message) if message else Answer("uncaught", None)
    return Answer("uncaught", f"stream ended without a result: {text[-200:]!r}")


def join(url: str, fn_index: int, data: list, trigger_id: int | None = None,
         session: str | None = None, timeout: float = 180.0) -> tuple[Answer, list[dict]]:
    """Join the queue as the page's own frontend does (/gradio_api/queue/join, by the event's
    index, with the component that triggered it) and read the session's messages to the end:
    the answer, and every message (gr.Info notes come as {"msg": "log", ...})."""
    import uuid

    base = url.rstrip("/")
    session = session or uuid.uuid4().hex
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "trigger_id": trigger_id}
    try:
        r = httpx.post(f"{base}/gradio_api/queue/join", content=json.dumps(body), timeout=timeout,
                       headers={"content-type": "application/json"})
        if r.status_code != 200:
            return Answer("refused" if r.status_code == 400 else "uncaught",
                          _detail(r)), []
        messages = []
        with httpx.stream("GET", f"{base}/gradio_api/queue/data",
                          params={"session_hash": session}, timeout=timeout) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                messages.append(json.loads(line[5:]))
                if messages[-1].get("msg") == "process_completed":
                    break
    except (httpx.HTTPError, ValueError) as e:
        return Answer("uncaught", f"{type(e).__name__}: {e}"), []
    done = messages[-1] if messages and messages[-1].get("msg") == "process_completed" else None
    if done is None:
        return Answer("uncaught", "stream ended without a result"), messages
    if done.get("success"):
        return Answer("ok"), messages
    message = (done.get("output") or {}).get("error")
    return (Answer("clean", message) if message else Answer("uncaught", None)), messages


def post(url: str, path: str, body) -> Answer:
    """A raw POST under /gradio_api/: `refused` (HTTP 400 with the page's message), `ok` (200) or
    `uncaught` (anything else: a 500 is an exception gradio did not handle)."""
    r = httpx.post(f"{url.rstrip('/')}/gradio_api/{path}", content=json.dumps(body), timeout=60,
                   headers={"content-type": "application/json"})
    if r.status_code == 200:
        return Answer("ok")
    return Answer("refused" if r.status_code == 400 else "uncaught", _detail(r))


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail"))
    except ValueError:
        return f"HTTP {r.status_code}: {r.text[:200]}"


def upload(url: str, name: str, data: bytes) -> str:
    """Upload a file the way the page does (/gradio_api/upload); the server's temporary path."""
    r = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": (name, data)},
                   timeout=60)
    r.raise_for_status()
    return r.json()[0]


def hostile_config(template: dict, **net) -> bytes:
    """A run's config.json with network fields replaced (e.g. num_layers=10**9)."""
    info = json.loads(json.dumps(template))
    info["config"]["net"].update(net)
    return json.dumps(info).encode()


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory (VmRSS) of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


@contextlib.contextmanager
def server_process(script: str, args: list[str], work: Path, start_s: float = 180.0):
    """`python SCRIPT --serve PORT *ARGS` (the script serves the page there) with the environment
    scripts/run_app.sh sets, once it answers: (url, proc, log path: WORK/server.log). Stopped
    afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    log_path = Path(work) / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, script, "--serve", str(port), *map(str, args)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + start_s
            while call(url, "results", ["cmrl", None], timeout=5).kind != "ok":
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the server did not start; see {log_path}")
                time.sleep(1)
            yield SimpleNamespace(url=url, proc=proc, log=log_path)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
