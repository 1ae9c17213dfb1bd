"""Try the app as a hostile visitor would, against a real server process, and print the figures:

- the server's resident memory before and at its peak while hostile checkpoints are sent (uploads of
  a config.json describing 10^9 layers passed as the checkpoint, and hostile run directories inside
  an allowed root: too many layers, too wide, over the memory budget, nested 50,000 deep);
- the latency of a normal rollout (Adapt, 1 episode) alone, and while that goes on;
- a fuzz of malformed inputs over every endpoint: inputs tried, usable, clean errors, uncaught
  errors, and tracebacks in the server's log.

    python scripts/hostile_probe.py [--checkpoint checkpoints/ml4/cmrl] [--fuzz N] [--json OUT]

Training launches in the fuzz are accepted but run `/bin/true` instead of the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hostile import (call, hostile_config, malformed_inputs, rss_mb, server_process,  # noqa: E402
                     upload)


def serve(port: int, work: Path) -> None:
    """The server process: the page as `python app.py --allow-root WORK/allowed` builds it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from app.ui import App, launch

    app = App(runs_dir=work / "runs", extra_roots=[work / "allowed"])
    app.jobs.python = "/bin/true"
    launch(app.build(), server_name="127.0.0.1", server_port=port, quiet=True)


def adapt_args(checkpoint: str, horizon: int = 100) -> list:
    return [checkpoint, "window-close-v3", "close the window", 0, "corner", 1, 0, horizon, 224]


def timed(url: str, api: str, args: list) -> tuple[float, str]:
    t0 = time.time()
    a = call(url, api, args)
    return time.time() - t0, a.kind


def hostile_dirs(work: Path, checkpoint: Path) -> list[str]:
    template = json.loads((checkpoint / "config.json").read_text())
    out = []
    for name, net in {"layers": dict(num_layers=10**9), "width": dict(module_width=12000),
                      "budget": dict(module_width=4096, embed_dim=4096, num_modules=8)}.items():
        d = work / "allowed" / f"hostile-{name}"
        d.mkdir(parents=True)
        (d / "config.json").write_bytes(hostile_config(template, **net))
        (d / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
        out.append(str(d))
    d = work / "allowed" / "hostile-nested"
    d.mkdir()
    (d / "config.json").write_text("[" * 50_000 + "]" * 50_000)
    (d / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    return out + [str(d)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/ml4/cmrl")
    p.add_argument("--fuzz", type=int, default=0, help="inputs to try (0: all generated)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the hostile phase")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return serve(int(args.serve[0]), Path(args.serve[1]))
    checkpoint = (ROOT / args.checkpoint).resolve()
    work = Path(tempfile.mkdtemp(prefix="cmrl-hostile-"))
    dirs = hostile_dirs(work, checkpoint)
    figures: dict = {"checkpoint": args.checkpoint, "cpu_count": os.cpu_count()}
    with server_process(__file__, [work], work) as server:
        url = server.url
        ck = str(checkpoint)
        timed(url, "adapt", adapt_args(ck, 20))  # warm: agent, text encoder, renderer
        alone = [timed(url, "adapt", adapt_args(ck))[0] for _ in range(3)]
        figures["rollout_alone_s"] = [round(x, 2) for x in alone]

        # Hostile phase: uploads and hostile run dirs, over and over, while a normal user rolls out.
        rss0, peak, stop = rss_mb(server.proc.pid), [0.0], threading.Event()
        refusals: dict[str, int] = {}

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(server.proc.pid))
                time.sleep(0.02)

        def attacker():
            template = json.loads((checkpoint / "config.json").read_text())
            while not stop.is_set():
                folder = str(Path(upload(url, "config.json",
                                         hostile_config(template, num_layers=10**9))).parent)
                for target in [folder] + dirs:
                    a = call(url, "adapt", adapt_args(target))
                    key = f"{a.kind}: {(a.message or '')[:70]}"
                    refusals[key] = refusals.get(key, 0) + 1

        threads = [threading.Thread(target=sample), threading.Thread(target=attacker)]
        for t in threads:
            t.start()
        during = []
        t_end = time.time() + args.seconds
        while time.time() < t_end:
            during.append(timed(url, "adapt", adapt_args(ck)))
        stop.set()
        for t in threads:
            t.join()
        figures.update(rss_before_mb=round(rss0, 1), rss_peak_during_hostile_mb=round(peak[0], 1),
                       rss_growth_mb=round(peak[0] - rss0, 1),
                       rollout_during_hostile_s=[round(x, 2) for x, _ in during],
                       rollouts_during_hostile_ok=sum(k == "ok" for _, k in during),
                       rollouts_during_hostile=len(during),
                       hostile_calls=sum(refusals.values()), hostile_answers=refusals)

        # Fuzz.
        cases = malformed_inputs(ck, n=args.fuzz or None, seed=0)
        t0 = time.time()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda c: call(url, *c), cases))
        kinds = [a.kind for a in answers]
        uncaught = [(api, str(a)[:80]) for (api, _), a in zip(cases, answers) if a.kind == "uncaught"]
        figures.update(fuzz_inputs=len(cases), fuzz_ok=kinds.count("ok"),
                       fuzz_clean_errors=kinds.count("clean"), fuzz_uncaught=len(uncaught),
                       fuzz_uncaught_examples=uncaught[:5], fuzz_seconds=round(time.time() - t0, 1),
                       fuzz_longest_message=max((len(a.message) for a in answers if a.message),
                                                default=0))
        healthy = timed(url, "adapt", adapt_args(ck))
        figures["healthy_after"] = healthy[1] == "ok"
        figures["rss_after_mb"] = round(rss_mb(server.proc.pid), 1)
    text = server.log.read_text(errors="replace")
    figures["server_log_tracebacks"] = text.count("Traceback")
    figures["server_log_refusal_lines"] = text.count(" refused: ")
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
