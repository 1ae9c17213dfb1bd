"""The Train tab and sweeps on a real multi-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`): a head with Ray's dashboard (its job server) and no CPUs of its own,
one worker declaring 1 CPU and 1 GPU (a stand-in: nothing here has CUDA) and one with 1 CPU. Jobs go
through `ray.job_submission` exactly as they would to a remote cluster; run directories are in a
temporary folder every node sees (one machine: a shared filesystem by construction).

Smoke-size runs, one torch thread each; the heavy part is every job's interpreter start. Skipped,
with the reason, only when Ray is not installed or cannot start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.job_submission", reason="Ray's job client is an optional install: "
                                                  "requirements-ray.txt")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TINY = ["--horizon", "20", "--envs-per-task", "1", "--warmup-steps", "0"]
"""Custom-run fields of the page at smoke size: horizon, envs per task, warm-up, then below."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str, every: float = 0.5, jobs=None, name=None):
    """pred()'s first true value within `timeout`; else an error with the job's state and log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    state = f"; {jobs.status(name)}\nlog:\n{jobs.log(name, 15)}" if jobs else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{state}")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobSubmissionClient

    port = free_port()
    try:  # fast health checks: a killed node is declared dead in ~2 s, not ~30 s
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": port, "_system_config": {
                "health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}})
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Ray cannot start a cluster here: {type(e).__name__}: {e}")
    try:
        gpu = c.add_node(num_cpus=1, num_gpus=1)
        cpu = c.add_node(num_cpus=1)
        c.wait_for_nodes()
        url = f"http://127.0.0.1:{port}"

        def job_server():
            try:
                return JobSubmissionClient(url)
            except Exception:  # noqa: BLE001 (not up yet)
                return None

        client = wait_for(job_server, 120, "Ray's job server")

        def job_agent():  # the head's job agent can come up after its server (a loaded machine)
            try:
                return client.submit_job(entrypoint="true")
            except RuntimeError as e:
                if "No available agent" not in str(e):
                    raise
                return None

        wait_for(job_agent, 120, "the head's job agent")
        yield SimpleNamespace(cluster=c, url=url, gpu=gpu, cpu=cpu, client=client)
    finally:
        c.shutdown()


@pytest.fixture
def ray_env(cluster, monkeypatch):
    """The page's environment for launching on the cluster (its interpreter is this one)."""
    monkeypatch.setenv("CMRL_RAY_ADDRESS", cluster.url)
    monkeypatch.setenv("CMRL_RAY_PYTHON", sys.executable)
    monkeypatch.delenv("CMRL_HOSTED", raising=False)
    return cluster


def node_of(cluster, jobs, name: str) -> str:
    last = json.loads((jobs.run_dir(name) / "app_job.json").read_text())["launches"][-1]
    return cluster.client.get_job_info(last["ray_job"]).driver_node_id


def tiny_spec(name: str, steps: int, device: str = "cpu"):
    from app.jobs import TrainSpec

    return TrainSpec(agent="pearl", steps=steps, device=device, name=name, horizon=20,
                     envs_per_task=1, warmup_steps=0, updates_per_step=0.05, eval_every=120,
                     checkpoint_every=40)


def fake_python(path: Path) -> Path:
    """Stands in for the cluster's interpreter: sleeps until stopped."""
    path.write_text("#!/bin/sh\nexec sleep 120\n")
    path.chmod(0o755)
    return path


def stop_all(jobs) -> None:
    for j in jobs.list():
        if j.stoppable:
            try:
                jobs.stop(j.name)
            except Exception:  # noqa: BLE001
                pass


def test_gpu_job_lands_on_the_gpu_node_and_fails_with_its_message(ray_env, tmp_path):
    """device cuda asks Ray for a GPU: the job is placed on the node that declares one (whose
    stand-in GPU torch cannot see, so the run fails and the page says why)."""
    from app.jobs import JobManager, RayJobs

    jobs = JobManager(tmp_path / "runs")
    assert isinstance(jobs.backend, RayJobs)
    st, _ = jobs.launch(tiny_spec("gpu", 40, device="cuda"))
    assert st.where.startswith("Ray job cmrl-gpu-") and st.state in ("queued", "running", "failed")
    st = wait_for(lambda: (s := jobs.status("gpu")).state == "failed" and s, 120, "the job's end")
    assert node_of(ray_env, jobs, "gpu") == ray_env.gpu.node_id
    assert "torch sees no CUDA device" in st.message, st.message
    assert ray_env.client.get_job_info(st.where.split()[-1]).metadata == {
        "run_dir": str(jobs.run_dir("gpu"))}
    assert "Running entrypoint" in jobs.log("gpu")  # the log is Ray's


def test_cluster_queue_cancel_and_wall_time_cap(ray_env, tmp_path, monkeypatch):
    """Two CPUs in the cluster: a third job waits in the cluster's queue (Cancel takes it out);
    the page's wall-time cap stops a cluster job (counted from when it runs)."""
    from app.jobs import JobManager

    monkeypatch.setenv("CMRL_RAY_PYTHON", str(fake_python(tmp_path / "python")))
    jobs = JobManager(tmp_path / "runs", max_seconds=4)
    try:
        for name in ("q1", "q2", "q3"):
            jobs.launch(tiny_spec(name, 100))
        wait_for(lambda: [jobs.status(n).state for n in ("q1", "q2")] == ["running"] * 2, 60,
                 "two jobs running")
        st = jobs.status("q3")
        assert st.state == "queued" and st.queue_position is None and "on the cluster" in st.progress
        # Ray stops a pending job when its turn comes (here: when the cap has stopped q1, q2)
        assert jobs.stop("q3").state in ("stopping", "stopped")
        for name in ("q1", "q2"):  # the cap stops them, their messages say so
            st = wait_for(lambda: (s := jobs.status(name)).state == "stopped" and s, 60, "the cap")
            assert "time limit" in st.message
        st = wait_for(lambda: (s := jobs.status("q3")).state == "stopped" and s, 60, "the cancel")
        assert "time limit" not in st.message
    finally:
        stop_all(jobs)


def test_page_launch_progress_stop_resume_on_the_cluster(ray_env, tmp_path):
    """Through the page's API, as a user: launch a custom run, follow it (progress panel, curves,
    Ray's log), stop it, resume it to a small total; it finishes with a checkpoint that loads and
    is offered in the Adapt, Compare and Inspector lists."""
    import cmrl
    from gradio_client import Client

    from app.ui import App, launch
    from cmrl.runs.checkpoint import has_resumable_state, read_run_info
    from cmrl.runs.logger import read_metrics

    (tmp_path / "ckpts").mkdir()
    app = App(checkpoint_roots=[tmp_path / "ckpts"], runs_dir=tmp_path / "runs", hosted=False)
    assert app.jobs.ray_address == ray_env.url
    demo = app.build()
    _, url, _ = launch(demo, prevent_thread_lock=True, server_name="127.0.0.1",
                       server_port=free_port(), quiet=True)
    try:
        client = Client(url, verbose=False)
        args = ["pearl", "ml4", 100_000, 0, "none", "", "cpu", "long", 20, 1, 0, 0.05, 120, 40]
        status, _ = client.predict(*args, api_name="/train_launch")
        assert "Launched **long** (Ray job cmrl-long-" in status and "Ray's job log" in status
        run = app.jobs.run_dir("long")

        def progress():
            out = client.predict("long", api_name="/train_refresh")
            return out if "train-bar" in (out[8] or "") and has_resumable_state(run) else None

        out = wait_for(progress, 300, "progress and a first checkpoint", 1.0, app.jobs, "long")
        assert "running" in out[3] and "Running entrypoint" in out[4]  # status; log from Ray
        assert "Stopping **long** (Ray sends it SIGINT" in client.predict(
            "long", api_name="/train_stop")
        wait_for(lambda: app.jobs.status("long").state == "stopped", 60, "the stop", 1.0,
                 app.jobs, "long")
        saved = read_run_info(run)["env_steps"]
        assert saved >= 40
        target = max(saved, app.jobs.status("long").step) + 40
        msg = client.predict("long", target, "cpu", api_name="/train_resume")
        assert "Resumed **long** (Ray job" in msg and "--resume" in msg
        wait_for(lambda: app.jobs.status("long").state == "finished", 300, "the resumed run",
                 1.0, app.jobs, "long")
        row = next(r for r in app.jobs_table() if r[0] == "long")
        assert row[1] == "finished" and row[-1].startswith("Ray job")
        assert cmrl.load_agent(run).kind == "pearl"
        assert read_run_info(run)["env_steps"] >= target
        steps = [r["step"] for r in read_metrics(run)]
        assert steps == sorted(steps) and steps[-1] >= target  # on from the checkpoint, not from 0
        assert any(c.endswith("long") for c in app.checkpoints())  # in Adapt, Compare, Inspector
    finally:
        stop_all(app.jobs)
        demo.close()


def test_sweep_spreads_over_both_nodes(cluster, tmp_path):
    """`cmrl sweep --address`: two trials, one CPU each, land on the two worker nodes; their run
    directories and Tune's results are in the shared --out, and `cmrl report` reads them."""
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "cmrl", "sweep", "--address", cluster.cluster.address,
           "--agents", "pearl", "--seeds", "0,1", "--out", str(out), "--cpus-per-trial", "1",
           "--steps", "60", *TINY, "--updates-per-step", "0.1", "--eval-every", "60",
           "--checkpoint-every", "60", "--batch-size", "16", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((out / "sweep.json").read_text())
    assert res["errors"] == []
    assert {t["node_id"] for t in res["trials"]} == {cluster.gpu.node_id, cluster.cpu.node_id}
    assert res["table"]["pearl"]["seeds_evaluated"] == 2
    assert any((out / "ray").rglob("result.json"))  # Tune's own results in its storage_path
    r = subprocess.run([sys.executable, "-m", "cmrl", "report", "--root", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = json.loads((out / "results.json").read_text())["agents"]["pearl"]["runs"]
    assert sorted(x["seed"] for x in runs) == [0, 1]


def _kill_node(cluster, node) -> None:
    """A node dies with all its processes at once: its raylet (`remove_node`, not graceful) and
    every process under it, the job's supervisor and the run itself included (on this one
    machine they would otherwise outlive their raylet)."""
    from scripts.ray_local_cost import descendants

    under = descendants(node.all_processes["raylet"][0].process.pid)
    cluster.cluster.remove_node(node, allow_graceful=False)
    for pid in under:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_node_killed_mid_run_fails_and_resumes_from_its_checkpoint(ray_env, tmp_path):
    from app.jobs import JobManager
    import cmrl
    from cmrl.runs.checkpoint import has_resumable_state, read_run_info
    from cmrl.runs.logger import read_metrics

    jobs = JobManager(tmp_path / "runs")
    try:
        jobs.launch(tiny_spec("victim", 100_000))
        run = jobs.run_dir("victim")
        wait_for(lambda: jobs.status("victim").state == "running" and has_resumable_state(run),
                 300, "a first checkpoint", 1.0, jobs, "victim")
        where = node_of(ray_env, jobs, "victim")
        node = ray_env.gpu if where == ray_env.gpu.node_id else ray_env.cpu
        assert where == node.node_id
        _kill_node(ray_env, node)
        st = wait_for(lambda: (s := jobs.status("victim")).state == "failed" and s, 120,
                      "the job to be reported failed")
        assert "node" in st.message and "died" in st.message, st.message
        # a new node joins (as an autoscaler would bring one); the run resumes from its checkpoint
        replacement = ray_env.cluster.add_node(num_cpus=1, num_gpus=1 if node is ray_env.gpu else 0)
        ray_env.cluster.wait_for_nodes()
        setattr(ray_env, "gpu" if node is ray_env.gpu else "cpu", replacement)
        saved = read_run_info(run)["env_steps"]
        target = max(saved, st.step) + 40
        jobs.resume("victim", target, "cpu")
        wait_for(lambda: jobs.status("victim").state == "finished", 300, "the resumed run", 1.0,
                 jobs, "victim")
        assert read_run_info(run)["env_steps"] >= target
        steps = [r["step"] for r in read_metrics(run)]
        assert steps == sorted(steps) and steps[-1] >= target  # on from the checkpoint
        assert cmrl.load_agent(run).kind == "pearl"
    finally:
        stop_all(jobs)
