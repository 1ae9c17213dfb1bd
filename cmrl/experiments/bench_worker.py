"""One update path timed in a Python process of its own: how `bench` compares update paths on a CPU.

Why a process each. The fast path changes a process-wide setting, glibc's malloc thresholds
(`sac.keep_freed_memory`), and an eager update timed in the same process runs under whatever that
setting is. Until 2026-11-27 the bench put glibc's initial thresholds back before each eager
window. Setting them by hand also switches off glibc's own adaptive thresholds, so those eager
windows page-faulted far more than eager does in its own process, the way `python -m cmrl train
--set sac.update_impl=eager` runs it. On the 2-core EPYC the cmrl update at 3 x 256 ran 12.8
upd/s in such windows and 15-17 in a process of its own, which inflated fast/eager from about
1.1x to 1.4-1.8x. Here every path runs as training runs it, in its own interpreter. The parent
alternates short windows between the processes, so load from outside hits them alike.

Protocol: the parent (`bench.PathProcess`) writes one JSON command per line on the worker's stdin;
the worker answers each with one JSON line on stdout, starting with `bench.REPLY`. Other output goes to stderr. Commands:
`setup` (build a learner on random data, `bench._update_fixture`), `window` (time updates for
some seconds), `fixed_cost` (`bench.fixed_cost_share` of this path), `exit`. A failed command
answers `{"error": ...}`; the parent raises it as a RuntimeError.

    python -m cmrl.experiments.bench_worker   (started by `bench.PathProcess`; not for people)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _serve() -> None:
    from .bench import REPLY

    out = sys.stdout
    sys.stdout = sys.stderr  # only replies go to the parent's pipe
    state: dict = {}

    def reply(obj: dict) -> None:
        out.write(REPLY + json.dumps(obj) + "\n")
        out.flush()

    for line in sys.stdin:
        try:
            msg = json.loads(line)
            cmd = msg.pop("cmd")
            if cmd == "exit":
                reply({})
                return
            reply(_handle(cmd, msg, state))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent
            reply({"error": f"{type(e).__name__}: {e}"})


def _handle(cmd: str, msg: dict, state: dict) -> dict:
    import torch

    from ..algo import sac
    from . import bench

    if cmd == "start":
        torch.set_num_threads(int(msg["threads"]))
        if msg.get("keep_memory"):
            sac.keep_freed_memory()
        return {"pid": os.getpid(), "threads": torch.get_num_threads()}
    if cmd == "setup":
        state.clear()
        learner, step = bench._update_fixture(msg["kind"], msg["batch"], torch.device("cpu"),
                                              msg["impl"], msg["num_tasks"], msg.get("fields"))
        step()  # a compiled path compiles here (its dry run), outside every window
        state.update(step=step, kind=msg["kind"], num_tasks=msg["num_tasks"],
                     fields=msg.get("fields"), impl=msg["impl"])
        return {"impl": learner.impl, "compile_s": learner.compile_seconds,
                "allocator_kept": sac.freed_memory_kept()}
    if cmd == "window":
        step = state["step"]
        step()
        n, f0, start = 0, _faults(), time.perf_counter()
        while n == 0 or time.perf_counter() - start < float(msg["seconds"]):
            step()
            n += 1
        elapsed = time.perf_counter() - start
        return {"per_s": n / elapsed, "faults_per_call": (_faults() - f0) / n}
    if cmd == "fixed_cost":
        share = bench.fixed_cost_share(state["kind"], state["num_tasks"], state["fields"],
                                       state["step"], float(msg["seconds"]), state["impl"],
                                       full_rows=msg.get("full_rows"))
        return {"share": share}
    raise ValueError(f"unknown command {cmd!r}")


if __name__ == "__main__":
    _serve()
