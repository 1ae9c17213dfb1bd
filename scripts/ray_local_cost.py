"""What a local Ray, started on demand by the page, would cost on this machine: the time until its
job server takes a job, the memory of its processes (RSS and PSS, summed over every process Ray
started), the page process's own growth from importing Ray and connecting, and the time a trivial
job takes through Ray's job submission against a plain subprocess. Prints one JSON object
(recorded in docs/ray.md); shuts down everything it started.

    .venv/bin/python scripts/ray_local_cost.py
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def kib(pid: int, field: str) -> int:
    """A field of /proc/PID/smaps_rollup (kB), 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    """Every live process whose parent chain reaches `root` (not `root` itself)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out = []
    for pid in parent:
        p = parent.get(pid)
        while p and p != root:
            p = parent.get(p)
        if p == root:
            out.append(pid)
    return out


def name(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return " ".join(c.decode(errors="replace") for c in cmd[:3])[-70:]
    except OSError:
        return "?"


def memory(root: int) -> dict:
    pids = descendants(root)
    return {"processes": len(pids), "rss_mb": round(sum(kib(p, "Rss") for p in pids) / 1024),
            "pss_mb": round(sum(kib(p, "Pss") for p in pids) / 1024),
            "largest": sorted(((round(kib(p, "Pss") / 1024), name(p)) for p in pids),
                              reverse=True)[:6]}


def main() -> None:
    me = os.getpid()
    out = {"cpu": os.cpu_count(), "page_rss_mb_before": round(kib(me, "Rss") / 1024)}
    t0 = time.time()
    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    out["import_ray_s"] = round(time.time() - t0, 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=port, log_to_driver=False)
    out["ray_init_s"] = round(time.time() - t0, 2)
    client = None
    while client is None and time.time() - t0 < 120:
        try:
            client = JobSubmissionClient(f"http://127.0.0.1:{port}")
        except Exception:  # noqa: BLE001 (the job server is not up yet)
            time.sleep(0.2)
    out["job_server_ready_s"] = round(time.time() - t0, 2)
    out["page_rss_mb_after_init"] = round(kib(me, "Rss") / 1024)
    out["ray_processes_at_start"] = memory(me)
    try:
        for i in range(2):  # the first job also starts Ray's worker pool
            t1 = time.time()
            job = client.submit_job(entrypoint=f"{sys.executable} -c pass")
            while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                time.sleep(0.1)
            out[f"trivial_job_{i + 1}_s"] = round(time.time() - t1, 2)
        t1 = time.time()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        out["trivial_subprocess_s"] = round(time.time() - t1, 2)
        time.sleep(10)
        out["ray_processes_idle_after_jobs"] = memory(me)
    finally:
        ray.shutdown()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
