"""The app, launched in-process and driven through its API with gradio_client: Adapt streams real
renders, routing and videos; four users at once; Cancel; Compare; the routing inspector; training
launched, followed, stopped and resumed as separate processes; shipped results; bad input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

HORIZON = 20


def tiny_app_run(tmp_path_factory) -> Path:
    """A tiny trained cmrl run (3 module layers of 3: two 3 x 3 routing matrices), trained once per
    test session and shared by the app tests and the browser test."""
    import cmrl
    from tests.test_end_to_end import tiny

    run = tmp_path_factory.getbasetemp() / "app-run" / "cmrl"
    if not (run / "config.json").is_file():
        cfg = tiny("cmrl", steps=180)
        cfg.net.num_layers, cfg.net.num_modules = 3, 3
        cfg.train.eval_every = 180
        cmrl.train(cfg, run, progress=False)
    return run


RECIPE_SMOKE = (20, 1)
"""Recipes launched by the tests: 20 steps per training phase, 1 data episode per noise level."""


def recipe_data_root(tmp_path_factory) -> Path:
    """Where the tests' recipe launches cache the data they make (shared by the session)."""
    return tmp_path_factory.getbasetemp() / "recipe-data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def frames_of(outputs, index=0) -> list[np.ndarray]:
    return [frame(o[index]) for o in outputs if isinstance(o[index], str)]


def plot_json(value) -> dict:
    assert isinstance(value, dict) and value.get("type") == "plotly", value
    return json.loads(value["plot"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return tiny_app_run(tmp_path_factory)


def _stat(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "n": len(values),
            "values": values}


@pytest.fixture(scope="module")
def results_root(tmp_path_factory, trained_run):
    """A shipped-results folder like checkpoints/ml4/: a cmrl run dir with evaluation.json (what
    `python -m cmrl eval --json` writes) and metrics.jsonl, and a results.json in the format
    `python -m cmrl report` writes, holding pearl (two seeds, both protocols) but not cmrl."""
    import cmrl

    root = tmp_path_factory.mktemp("results") / "ml4"
    run = root / "cmrl"
    run.mkdir(parents=True)
    for f in ("config.json", "model.safetensors", "metrics.jsonl"):
        shutil.copy(trained_run / f, run / f)
    res = cmrl.load_agent(run).evaluate(num_variations=1, adaptation_episodes=1, eval_episodes=1)
    res["command"] = f"python -m cmrl eval --checkpoint {run} --json {run}/evaluation.json"
    (run / "evaluation.json").write_text(json.dumps(res))
    tasks = {"drawer-open-v3": "train", "drawer-close-v3": "train", "window-open-v3": "train",
             "window-close-v3": "test"}
    protocols = {
        proto: {"protocol": {"name": proto}, "command": f"python -m cmrl eval --checkpoint "
                f"checkpoints/ml4/pearl --protocol {proto} --json checkpoints/ml4/pearl/x.json",
                "tasks": {t: {"split": split, "success": _stat(success), "return": _stat([40.0, 60.0])}
                          for t, split in tasks.items()}}
        for proto, success in (("cmrl", [0.2, 0.3]), ("metaworld", [0.5, 0.7]))}
    (root / "results.json").write_text(json.dumps({
        "command": "python -m cmrl report --root checkpoints/ml4", "root": "checkpoints/ml4",
        "agents": {"pearl": {"runs": [{"dir": f"checkpoints/ml4/pearl-s{s}", "seed": s,
                                       "mode": "offline"} for s in (0, 1)],
                             "protocols": protocols}},
        "training_curves": {}, "steps_to_90": {}, "finetune": []}))
    return root


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory):
    """A folder the app may load checkpoints from (an extra allowed root), for broken ones."""
    return tmp_path_factory.mktemp("app-scratch")


@pytest.fixture(scope="module")
def server(trained_run, results_root, scratch_root, tmp_path_factory):
    from app.ui import App

    runs = tmp_path_factory.mktemp("app-runs")
    app = App(checkpoint_roots=[trained_run.parent], runs_dir=runs, results_root=results_root,
              default=str(trained_run), hosted=False, extra_roots=[scratch_root])
    app.jobs.recipe_smoke = RECIPE_SMOKE  # recipes at smoke size, their data made in a tmp dir
    app.jobs.data_root = recipe_data_root(tmp_path_factory)
    with serving(app) as (url, _):
        yield app, url


@contextlib.contextmanager
def serving(app):
    """The app's page on a free local port, as (url, gradio Blocks); afterwards its running jobs
    are stopped and the server closed."""
    from app.ui import launch

    demo = app.build()
    _, url, _ = launch(demo, prevent_thread_lock=True, server_name="127.0.0.1",
                       server_port=free_port(), quiet=True)
    try:
        yield url, demo
    finally:
        for job in app.jobs.running():
            try:
                app.jobs.stop(job.name, grace_s=2)
            except Exception:
                pass
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server[1], verbose=False)


def adapt_args(run, scene="window-close-v3", goal="close the window", variation=3,
               camera="corner", episodes=2, eval_episodes=0, horizon=HORIZON, size=224):
    return [str(run), scene, goal, variation, camera, episodes, eval_episodes, horizon, size]


def test_adapt_streams_frames_routing_posterior_and_videos(client, trained_run):
    import imageio.v2 as imageio

    job = client.submit(*adapt_args(trained_run, episodes=2, eval_episodes=1), api_name="/adapt")
    outputs = list(job)
    frames = frames_of(outputs)
    assert len(outputs) >= 5 and len(frames) >= 5
    assert all(f.shape == (224, 224, 3) for f in frames)
    assert all(f.std() > 5 for f in frames)  # real renders, not blank
    assert len({f.tobytes() for f in frames}) > len(frames) // 2  # the arm moves
    # Routing: one n x n heatmap per routing layer (2 layers of 3 x 3 here), rows summing to 1;
    # updated at least every 10 env steps.
    routing = [o[1] for o in outputs if isinstance(o[1], dict) and "plot" in o[1]]
    assert len(routing) >= 3 * HORIZON // 10
    fig = plot_json(routing[-1])
    heat = [t for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heat) == 2
    for t in heat:
        z = np.array(t["z"])
        assert z.shape == (3, 3)
        np.testing.assert_allclose(z.sum(1), 1.0, atol=2e-3)
    # Posterior: mean and std per z dimension.
    post = plot_json(next(o[2] for o in reversed(outputs) if isinstance(o[2], dict)
                          and "plot" in o[2]))
    bar = post["data"][0]
    latent = json.loads((trained_run / "config.json").read_text())["config"]["net"]["latent_dim"]
    assert len(bar["y"]) == latent and len(bar["error_y"]["array"]) == latent
    assert f"after {2 * HORIZON} transitions" in post["layout"]["title"]["text"]  # 2 adapt. episodes
    # Every episode's mp4 opens; the summary has one row per episode.
    videos = [o[4] for o in outputs if isinstance(o[4], str) or (isinstance(o[4], dict)
                                                                 and o[4].get("video"))]
    assert len(videos) == 3, [o[4] for o in outputs]
    video = videos[-1] if isinstance(videos[-1], str) else videos[-1]["video"]
    assert video.endswith(".mp4")
    reader = imageio.get_reader(video)
    n = sum(1 for _ in reader)
    reader.close()
    assert n == HORIZON
    gallery = next(o[5] for o in reversed(outputs) if isinstance(o[5], list) and o[5])
    assert len(gallery) == 3 and all(g["video"].endswith(".mp4") for g in gallery)
    table = outputs[-1][6]
    assert [r[1] for r in table["data"]] == ["adapt", "adapt", "eval"]
    status = outputs[-1][3]
    assert "Done" in status and "Summary" in status and "evaluation episodes" in status


def test_four_clients_at_once_get_their_own_frames(server, trained_run):
    """Four users, four cameras, one at a time per render thread: every frame a user receives
    matches that user's own camera (never another user's)."""
    import cmrl
    from gradio_client import Client

    app, url = server
    cameras = ["corner", "topview", "behindGripper", "corner2"]
    agent = cmrl.load_agent(trained_run)
    refs = {}
    for cam in cameras:  # a reference render of each camera, made here
        rec = next(iter(agent.rollout("drawer-open-v3", "open the drawer", 1, 1, 0, render=True,
                                      camera=cam, horizon=HORIZON)))
        refs[cam] = rec.frame.astype(np.float32)
    results: dict[str, list] = {}

    def user(cam):
        c = Client(url, verbose=False)
        results[cam] = list(c.submit(*adapt_args(trained_run, "drawer-open-v3", "open the drawer",
                                                 1, cam, 1, 0), api_name="/adapt"))

    threads = [threading.Thread(target=user, args=(c,)) for c in cameras]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert set(results) == set(cameras)
    for cam in cameras:
        frames = frames_of(results[cam])
        assert len(frames) >= 5, cam
        for f in frames:
            dist = {c: np.abs(f - r).mean() for c, r in refs.items()}
            assert min(dist, key=dist.get) == cam, (cam, dist)
        assert "Done" in results[cam][-1][3]
    assert app.sessions.active() == 0


def test_cancel_stops_promptly(server, client, trained_run):
    app, _ = server
    job = client.submit(*adapt_args(trained_run, episodes=5, horizon=300), api_name="/adapt")
    deadline = time.time() + 120
    while time.time() < deadline and sum(isinstance(o[0], str) for o in job.outputs()) < 3:
        time.sleep(0.1)
    assert app.sessions.active() == 1
    t0 = time.time()
    client.predict(api_name="/cancel")
    while app.sessions.active() and time.time() - t0 < 10:
        time.sleep(0.05)
    assert app.sessions.active() == 0, "the rollout did not stop"
    assert time.time() - t0 < 5
    _wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("rollout-")
                           and t.is_alive()], 5, "the rollout thread to end")
    _wait_for(job.done, 20, "the cancelled job to end")
    assert len(frames_of(job.outputs())) < 5 * 300  # it did not run to the end


def test_compare_goals_side_by_side(client, trained_run):
    outputs = list(client.submit(str(trained_run), "window-close-v3", "open the window",
                                 "close the window", 2, "corner", 1, HORIZON, api_name="/compare"))
    fa, fb = frames_of(outputs, 0), frames_of(outputs, 3)
    assert len(fa) >= 5 and len(fb) >= 5
    for idx in (1, 4):
        fig = plot_json(next(o[idx] for o in reversed(outputs) if isinstance(o[idx], dict)
                             and "plot" in o[idx]))
        assert sum(t["type"] == "heatmap" for t in fig["data"]) == 2
    outcome = outputs[-1][6]
    assert "open the window" in outcome and "close the window" in outcome
    assert "cosine similarity" in outcome


def test_routing_inspector(client, trained_run):
    tasks = ["drawer-open-v3", "window-open-v3", "window-close-v3"]
    outputs = list(client.submit(str(trained_run), tasks, 1, 1, HORIZON, "jensen-shannon",
                                 api_name="/inspect"))
    mean_fig = plot_json(next(o[0] for o in reversed(outputs) if isinstance(o[0], dict)
                              and "plot" in o[0]))
    assert sum(t["type"] == "heatmap" for t in mean_fig["data"]) == 2 * len(tasks)
    sim = plot_json(next(o[1] for o in reversed(outputs) if isinstance(o[1], dict)
                         and "plot" in o[1]))
    z = np.array(sim["data"][0]["z"])
    assert z.shape == (3, 3)
    np.testing.assert_allclose(np.diag(z), 1.0)
    np.testing.assert_allclose(z, z.T)
    assert len(outputs[-1][2]["data"]) == 3 and "Done" in outputs[-1][3]
    # where the held-out task lands: nearest picked meta-train task by routing and by z
    held = next(r for r in outputs[-1][2]["data"] if r[0] == "window-close-v3")
    picked = {"drawer-open-v3", "window-open-v3"}
    assert {held[6], held[7], held[8], held[9]} <= picked


@pytest.mark.parametrize("change, message", [
    (dict(goal=""), "empty"),
    (dict(goal="   "), "empty"),
    (dict(goal="x" * 10_000), "10000 characters"),
    (dict(scene="no-such-scene-v3"), "Unknown scene"),
    (dict(variation="abc"), "whole number"),
    (dict(variation=None), "goal variation is empty"),
    (dict(variation=99), "from 0 to 49"),
    (dict(camera="fisheye"), "Unknown camera 'fisheye'"),
    (dict(run="/nonexistent/run"), "not available on this page"),
    (dict(run=""), "No checkpoint selected"),
    (dict(episodes=0, eval_episodes=0), "Nothing to run"),
])
def test_bad_adapt_input_gets_a_clear_message(client, trained_run, change, message):
    args = dict(zip(["run", "scene", "goal", "variation", "camera", "episodes", "eval_episodes",
                     "horizon", "size"], adapt_args(trained_run)))
    args.update(change)
    with pytest.raises(Exception, match=message):
        client.submit(*args.values(), api_name="/adapt").result()


def test_corrupt_checkpoint_gets_a_clear_message(client, scratch_root, trained_run):
    bad = scratch_root / "corrupt"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    shutil.copy(trained_run / "model.safetensors", bad)
    with pytest.raises(Exception, match="not valid JSON"):
        client.submit(*adapt_args(bad), api_name="/adapt").result()
    truncated = scratch_root / "truncated"
    shutil.copytree(trained_run, truncated, ignore=shutil.ignore_patterns("state"))
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="safetensors"):
        client.submit(*adapt_args(truncated), api_name="/adapt").result()
    with pytest.raises(Exception, match="Pick at least one task"):
        client.submit(str(trained_run), [], 1, 1, HORIZON, "cosine", api_name="/inspect").result()


def _refresh(client, run):
    out = client.predict(run, api_name="/train_refresh")
    return out


def _wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


TINY_TRAIN = dict(horizon=HORIZON, envs=1, warmup=0, upd=0.05, eval_every=120, ckpt_every=120)


def train_args(name, steps, agent="pearl", **kw):
    t = dict(TINY_TRAIN, **kw)
    return [agent, "ml4", steps, 0, "none", "", "cpu", name, t["horizon"], t["envs"], t["warmup"],
            t["upd"], t["eval_every"], t["ckpt_every"]]


def test_train_launch_curves_stop_resume(server, client):
    app, _ = server
    status, _ = client.predict(*train_args("tiny", 240), api_name="/train_launch")
    assert "Launched **tiny**" in status and "--config" in status and "240 steps" in status
    launched = json.loads((app.jobs.run_dir("tiny") / "launch_config.json").read_text())["config"]
    assert launched["train"]["steps"] == 240 and launched["benchmark"]["horizon"] == HORIZON
    # One run at a time: a second launch while it runs is queued; Cancel takes it off the queue.
    status, _ = client.predict(*train_args("other", 240), api_name="/train_launch")
    assert "Queued **other** (position 1)" in status
    assert app.jobs.status("other").state == "queued"
    assert "Cancelled **other**" in client.predict("other", api_name="/train_cancel")
    assert app.jobs.status("other").state == "cancelled"
    with pytest.raises(Exception, match="nothing to cancel"):
        client.predict("other", api_name="/train_cancel")
    assert app.jobs.status("tiny").state == "running"
    # Live curves from metrics.jsonl.
    def curves():
        out = _refresh(client, "tiny")
        fig = out[2]
        if isinstance(fig, dict) and "plot" in fig:
            data = plot_json(fig)["data"]
            return data if any(t.get("name", "").startswith("critic_loss") for t in data) else None
        return None

    data = _wait_for(curves, 150, "training curves")
    assert any("eval test" in t.get("name", "") or "(train)" in t.get("name", "") for t in data)
    _wait_for(lambda: app.jobs.status("tiny").state == "finished", 150, "the run to finish")
    assert next(r for r in app.jobs_table() if r[0] == "tiny")[1] == "finished"
    assert any(c.endswith("tiny") for c in app.checkpoints())  # now pickable in Adapt
    # Stop: SIGINT to the process group; the run is reported stopped and its process is gone.
    client.predict(*train_args("long", 100_000), api_name="/train_launch")
    _wait_for(lambda: (app.jobs.run_dir("long") / "train.log").stat().st_size > 0, 30, "a log")
    msg = client.predict("long", api_name="/train_stop")
    assert "Stopping" in msg
    _wait_for(lambda: app.jobs.status("long").state == "stopped", 40, "the run to stop")
    from app.jobs import pid_alive

    assert not pid_alive(app.jobs.status("long").pid)
    with pytest.raises(Exception, match="no checkpoint to resume from|not running"):
        client.predict("long", None, "cpu", api_name="/train_resume")
    # Resume continues the finished run to a larger budget.
    msg = client.predict("tiny", 360, "cpu", api_name="/train_resume")
    assert "Resumed **tiny**" in msg and "--resume" in msg
    _wait_for(lambda: app.jobs.status("tiny").state == "finished", 150, "the resumed run")
    from cmrl.runs.logger import read_metrics

    steps = [r["step"] for r in read_metrics(app.jobs.run_dir("tiny"))]
    assert steps[-1] == 360 and steps == sorted(steps)


def test_train_bad_input_and_hosted_mode(client, tmp_path):
    from app.jobs import JobError, JobManager, TrainSpec
    from cmrl.config import RunConfig

    with pytest.raises(Exception, match="Unknown benchmark"):
        client.predict(*train_args("x1", 100)[:1], "ml99", *train_args("x1", 100)[2:],
                       api_name="/train_launch")
    with pytest.raises(Exception, match="Steps must be a whole number"):
        client.predict(*train_args("x2", "lots"), api_name="/train_launch")
    with pytest.raises(Exception, match="Invalid run name"):
        client.predict(*train_args("../escape", 100), api_name="/train_launch")
    with pytest.raises(Exception, match="not available on this page"):
        args = train_args("x3", 100)
        args[5] = str(tmp_path / "no-such-dataset")
        client.predict(*args, api_name="/train_launch")
    hosted = JobManager(tmp_path / "h", hosted=True)
    with pytest.raises(JobError, match="switched off on this hosted demo"):
        hosted.launch(TrainSpec(steps=10))
    capped = JobManager(tmp_path / "c", max_steps=50)
    spec, notes = capped.validate(TrainSpec(steps=10_000))
    assert spec.steps == 50 and "capped" in notes[0]
    argv = capped.build_argv(spec, tmp_path / "c" / "r")
    assert argv[1:5] == ["-m", "cmrl", "train", "--run-dir"] and "--steps" not in argv
    # the launch trains the RunConfig checked here, handed over as a file (train --config)
    path = Path(argv[argv.index("--config") + 1])
    assert path.parent == tmp_path / "c" / "r"
    cfg = RunConfig.from_dict(json.loads(path.read_text())["config"])
    assert (cfg.train.steps, cfg.train.agent, cfg.benchmark.name) == (50, "cmrl", "ml4")
    # the library's own checks answer for the page: a value it refuses is one line
    with pytest.raises(JobError, match="Unknown agent 'nope'; choose one of cmrl"):
        capped.validate(TrainSpec(steps=10, agent="nope"))
    with pytest.raises(JobError, match="Unknown task 'nope-v3'"):
        capped.validate(TrainSpec(steps=10, benchmark="ml1:nope-v3"))


def test_recipes_launch_queue_and_finish_with_a_checkpoint(server, client):
    """The quick recipe runs (smoke size) while offline-online waits in the queue, then starts by
    itself; both finish with status.json, curves with evaluation success per task, and a checkpoint
    that loads and is listed in the other tabs."""
    import cmrl
    from cmrl.runs.run_status import read_status

    app, _ = server
    status, run = client.predict("quick", "ml4", 0, "cpu", "rq", api_name="/train_recipe")
    assert "Launched **rq**" in status and "cmrl recipe --name quick" in status
    assert "--steps 20 --data-episodes 1" in status and "--data-root" in status
    status, _ = client.predict("offline-online", "ml4", 1, "cpu", "roo", api_name="/train_recipe")
    assert "Queued **roo** (position 1)" in status
    row = next(r for r in app.jobs_table() if r[0] == "roo")
    assert row[1] == "queued" and row[5] == "queued (position 1)"

    def panel():  # the progress panel of the selected run: phases, a bar, step/total, device
        out = _refresh(client, "rq")
        return out[8] if "train-bar" in (out[8] or "") else None

    html = _wait_for(panel, 150, "the progress bar of rq")
    assert "phases:" in html and "making data" in html and "device cpu" in html
    _wait_for(lambda: app.jobs.status("rq").state == "finished", 600, "rq to finish")
    # the queued run starts by itself when rq ends
    _wait_for(lambda: app.jobs.status("roo").state in ("running", "finished"), 30, "roo to start")
    _wait_for(lambda: app.jobs.status("roo").state == "finished", 600, "roo to finish")
    for name, phases in (("rq", ["data", "offline"]), ("roo", ["data", "offline", "online"])):
        run_dir = app.jobs.run_dir(name)
        st = read_status(run_dir)
        assert st["state"] == "finished" and st["phases"] == phases, st
        assert cmrl.load_agent(run_dir).kind == "cmrl"
        assert any(c.endswith(name) for c in app.checkpoints())  # pickable in Adapt & co.
        data = plot_json(_refresh(client, name)[2])["data"]
        assert any("(eval train)" in t.get("name", "") for t in data)  # success per task
        assert any(t.get("name") == "critic_loss" for t in data)
    row = next(r for r in app.jobs_table() if r[0] == "roo")
    assert row[1:5] == ["finished", "recipe offline-online", "ml4", "online"]
    # a finished recipe has nothing to resume; a checkpoint appearing updates the dropdowns
    with pytest.raises(Exception, match="finished every phase"):
        client.predict("roo", None, "cpu", api_name="/train_resume")


def test_recipe_validation_caps_queue_and_hosted_mode(client, tmp_path):
    from app.jobs import MAX_QUEUED, JobError, JobManager, RecipeSpec

    with pytest.raises(Exception, match="The recipe must be one of"):
        client.predict("fastest", "ml4", 0, "cpu", "", api_name="/train_recipe")
    with pytest.raises(Exception, match="Launch custom run"):
        client.predict("custom", "ml4", 0, "cpu", "", api_name="/train_recipe")
    with pytest.raises(Exception, match="Unknown benchmark"):
        client.predict("quick", "ml99", 0, "cpu", "", api_name="/train_recipe")
    with pytest.raises(Exception, match="Invalid run name"):
        client.predict("quick", "ml4", 0, "cpu", "../up", api_name="/train_recipe")
    # full: a GPU recipe; its 500,000 steps per phase are capped on a page with a step cap
    capped = JobManager(tmp_path / "c", max_steps=1000, data_root=tmp_path / "d")
    spec, notes, extra = capped.validate_recipe(RecipeSpec("full", "ml4", 0, "cpu"))
    assert extra == {"steps": 1000} and any("capped at 1,000" in n for n in notes)
    assert any("sized for a GPU" in n for n in notes)
    argv = capped.build_recipe_argv(spec, tmp_path / "c" / "r", extra)
    assert argv[1:6] == ["-m", "cmrl", "recipe", "--name", "full"]
    assert argv[-4:] == ["--data-root", str(tmp_path / "d"), "--steps", "1000"]
    # the queue holds MAX_QUEUED runs behind the running one, then refuses
    fake = tmp_path / "py"
    fake.write_text("#!/bin/sh\nsleep 60\n")
    fake.chmod(0o755)
    jobs = JobManager(tmp_path / "q", python=str(fake))
    try:
        assert jobs.launch(RecipeSpec(name="q0"))[0].state == "running"
        for i in range(1, MAX_QUEUED + 1):
            assert jobs.launch(RecipeSpec(name=f"q{i}"))[0].state == "queued"
        with pytest.raises(JobError, match="queue is full"):
            jobs.launch(RecipeSpec(name="one-too-many"))
        assert jobs.stop("q3").state == "cancelled"
        assert jobs.status("q4").queue_position == 3
        jobs.launch(RecipeSpec(name="q9"))  # room again
    finally:
        for name in jobs.queued():
            jobs.stop(name)
        for j in jobs.running():
            jobs.stop(j.name, grace_s=1)
    hosted = JobManager(tmp_path / "h", hosted=True)
    with pytest.raises(JobError, match="switched off on this hosted demo"):
        hosted.launch(RecipeSpec(name="nope"))
    assert hosted.pump() is None and not (tmp_path / "h").exists()


def test_episode_length_defaults_to_the_checkpoint_horizon(server, client, trained_run,
                                                           scratch_root):
    import urllib.request

    app, url = server
    horizon = json.loads((trained_run / "config.json").read_text())["config"]["benchmark"]["horizon"]
    config = json.loads(urllib.request.urlopen(f"{url.rstrip('/')}/config").read())
    sliders = [c["props"] for c in config["components"]
               if c["props"].get("label", "").startswith("episode length")]
    assert len(sliders) == 3 and all(s["value"] == horizon for s in sliders), sliders
    for h, expected in ((60, 60), (5000, 500)):
        other = scratch_root / f"horizon-{h}"
        other.mkdir(exist_ok=True)
        info = json.loads((trained_run / "config.json").read_text())
        info["config"]["benchmark"]["horizon"] = h
        (other / "config.json").write_text(json.dumps(info))
        shutil.copy(trained_run / "model.safetensors", other)
        assert _value(client.predict(str(other), api_name="/checkpoint_horizon")) == expected
    assert _value(client.predict(str(trained_run), api_name="/checkpoint_horizon")) == horizon
    assert app.checkpoint_horizon("/etc") is None and app.checkpoint_horizon(None) is None


def _value(update):
    """A component update's value as gradio_client returns it."""
    return update["value"] if isinstance(update, dict) else update


def _rows(table) -> dict[tuple[str, str], list]:
    return {(r[0], r[1]): r for r in table["data"]}


def test_results_tab(client, results_root, tmp_path):
    from app.results import load_results

    md, bars, curves, table = client.predict("cmrl", api_name="/results")
    assert "python -m cmrl eval --checkpoint" in md and "python -m cmrl report" in md
    fig = plot_json(bars)
    agents = {t["name"].split(" ")[0] for t in fig["data"]}
    assert agents == {"cmrl", "pearl"} and all(t["type"] == "bar" for t in fig["data"])
    assert any("held out" in x for x in fig["data"][0]["x"])
    pearl_bar = next(t for t in fig["data"] if t["name"] == "pearl (n=2)")
    assert pearl_bar["y"] == pytest.approx([0.25] * 4)
    lines = [t for t in plot_json(curves)["data"] if t["type"] == "scatter"]
    assert lines and all(t["name"] == "cmrl" for t in lines)
    rows = _rows(table)
    assert {a for a, _ in rows} == {"cmrl", "pearl"}
    # pearl from results.json (report format), cmrl averaged from its run dir's evaluation.json.
    # (the pearl entries predate the zero-shot episode: no zero-shot or gain to show)
    assert rows["pearl", "drawer-open-v3"][2:] == ["meta-train", "-", "0.25 ± 0.07", "-",
                                                   "50.0 ± 14.1", 2]
    assert rows["pearl", "window-close-v3"][2] == "held out"
    ev = json.loads((results_root / "cmrl" / "evaluation.json").read_text())["splits"]
    for split, part in ev.items():
        for task, r in part["tasks"].items():
            assert rows["cmrl", task][2:] == [
                "held out" if split == "test" else "meta-train",
                f"{r['zero_shot_success']:.2f}", f"{r['success_rate']:.2f}",
                f"{r['success_rate'] - r['zero_shot_success']:+.2f}", f"{r['mean_return']:.1f}", 1]
    # The other protocol: only what was evaluated with it, and which agents lack it.
    md, bars, _, table = client.predict("metaworld", api_name="/results")
    rows = _rows(table)
    assert {a for a, _ in rows} == {"pearl"}
    assert rows["pearl", "drawer-open-v3"][4] == "0.60 ± 0.14"
    assert "--protocol metaworld" in md and "No `metaworld` evaluation shipped for: cmrl" in md
    assert {t["name"] for t in plot_json(bars)["data"]} == {"pearl (n=2)"}
    empty = load_results(tmp_path / "nothing")
    assert empty.empty
    from app.ui import App

    msg, *_ = App(results_root=tmp_path / "nothing").results("cmrl")
    assert "No results shipped yet" in msg


def test_results_tab_offers_every_shipped_benchmark(results_root, tmp_path, monkeypatch):
    """Without an explicit root the tab lists the folders of checkpoints/ that hold results
    (ml4 first), shows the one asked for, and refuses a name it did not list."""
    import gradio as gr

    from app import results as results_module
    from app.ui import App

    shipped = tmp_path / "checkpoints"
    shutil.copytree(results_root, shipped / "ml4")
    shutil.copytree(results_root / "cmrl", shipped / "ml10" / "cmrl")
    (shipped / "empty").mkdir()
    monkeypatch.setattr(results_module, "SHIPPED_ROOT", shipped)
    monkeypatch.setattr(results_module, "DEFAULT_RESULTS_ROOT", shipped / "ml4")
    page = App()
    assert list(page.results_roots) == ["ml4", "ml10"]
    md4, _, _, table4 = page.results("cmrl")
    md10, _, _, table10 = page.results("cmrl", "ml10")
    assert "ml4/" in md4 and "ml10/" in md10
    assert {r[0] for r in table4} == {"cmrl", "pearl"} and {r[0] for r in table10} == {"cmrl"}
    for bad in ("ml45", "../ml4", "empty"):
        with pytest.raises(gr.Error, match="benchmark must be one of ml4, ml10"):
            page.results("cmrl", bad)


def test_results_unreadable_files_become_problems(results_root, tmp_path):
    """A corrupt results.json, evaluation file or config.json is reported, never raised; the
    rest is still shown."""
    from app.results import load_results
    from app.ui import App

    root = tmp_path / "ml4"
    shutil.copytree(results_root, root)
    good = load_results(results_root).success["cmrl"]
    (root / "results.json").write_text('{"agents": ')
    for name in ("cmrl-s1", "cmrl-s2"):
        shutil.copytree(root / "cmrl", root / "seeds" / name)
    (root / "seeds" / "cmrl-s1" / "evaluation.json").write_text("{not json")
    (root / "seeds" / "cmrl-s1" / "metaworld_evaluation.json").write_text(
        json.dumps({"splits": {"train": {"tasks": {"drawer-open-v3": {"success_rate": 1.0}}}}}))
    (root / "seeds" / "cmrl-s2" / "config.json").write_text("[]")
    res = load_results(root, "cmrl")
    assert len(res.problems) == 4, res.problems
    for bad in ("results.json", "cmrl-s1/evaluation.json", "cmrl-s1/metaworld_evaluation.json",
                "cmrl-s2/config.json"):
        assert any(bad in p for p in res.problems), (bad, res.problems)
    assert res.success == {"cmrl": good}  # the corrupt seed is left out of the mean
    assert len(res.curves["cmrl"]) == 2  # its metrics.jsonl still counts; cmrl-s2 is skipped
    assert load_results(root, "metaworld").success == {}
    md, *_ = App(results_root=root).results("cmrl")
    assert "Problems:" in md and "cmrl-s2/config.json" in md


def test_app_py_serves_and_no_checkpoint_message(tmp_path):
    """`python app.py` serves the page (analytics off, GRADIO_SERVER_PORT honoured) even with no
    checkpoint, pointing to the Train tab."""
    import subprocess
    import sys
    import urllib.request

    from app.ui import App

    demo_md = App(checkpoint_roots=[tmp_path], runs_dir=tmp_path / "runs").checkpoint_info(None)
    assert "Train" in demo_md
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            except OSError:
                return False

        _wait_for(up, 90, "app.py to serve")
        config = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/config").read())
        assert not config.get("analytics_enabled", False)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_custom_run_form_is_built_from_the_config_fields():
    """The custom run's inputs come from `cmrl.config.config_fields`: choices, defaults and help
    lines are the config's own, in the order `train_launch` takes them."""
    import inspect

    import gradio as gr

    from app.train_tab import CUSTOM_FIELDS, TrainTab, field_input
    from cmrl.config import AGENT_KINDS, PRIOR_DATA, config_fields

    with gr.Blocks():
        widgets = {name: field_input(name) for name in CUSTOM_FIELDS}
    info = {f.name: f for f in config_fields()}
    assert [v for _, v in widgets["train.agent"].choices] == list(AGENT_KINDS)
    assert [v for _, v in widgets["train.prior_data"].choices] == list(PRIOR_DATA)
    horizon = widgets["benchmark.horizon"]
    assert horizon.value is None and horizon.label == \
        f"horizon (empty: {info['benchmark.horizon'].default:,})"
    assert horizon.info == info["benchmark.horizon"].doc.split(". ")[0].rstrip(".")
    assert widgets["train.updates_per_step"].precision is None  # a float field
    assert widgets["train.eval_every"].precision == 0
    params = list(inspect.signature(TrainTab.train_launch).parameters)[1:]
    custom = [p for p in params if p not in ("benchmark", "seed", "device", "name")]
    assert custom == [name.split(".", 1)[1] for name in CUSTOM_FIELDS]


def test_drain_ends_a_batch_at_each_finished_episodes_video():
    """Two episodes finishing within one polling window still reach the page as two videos."""
    import queue

    from app.adapt import Event, drain

    q: queue.Queue = queue.Queue()
    kinds = ["step", "video", "step", "video", "step"]
    for k in kinds:
        q.put(Event(tag="A", kind=k))
    batches = [[e.kind for e in drain(q, 0.01)] for _ in range(3)]
    assert batches == [["step", "video"], ["step", "video"], ["step"]]
    assert drain(q, 0.01) == []


def test_adapt_opens_on_a_hidden_goal_where_shipped(tmp_path):
    """The shipped page opens Adapt on ML1 reach with cmrl: the goal position is hidden from the
    agent, and its checkpoint carries the goal probe that draws the agent's belief. A page given
    its own default checkpoint opens on that one, on window-close."""
    from cmrl.algo.trained_agent import load_agent

    from app.common import ADAPT_OPENING
    from app.ui import App

    page = App(runs_dir=tmp_path / "runs")
    found = page.checkpoints()
    assert page.adapt_opening(found) == ADAPT_OPENING
    assert load_agent(page.access.checkpoint(ADAPT_OPENING[0])).goal_probe() is not None
    other = App(runs_dir=tmp_path / "runs", default=found[-1])
    assert other.adapt_opening(other.checkpoints()) == (found[-1], "window-close-v3")


def test_checkpoint_header_counts_the_training_its_weights_started_from():
    """A run trained on from another's weights says so: the shipped ML1 reach rl2 ran 1.5M env
    steps on top of 3M, and its header gives both."""
    from cmrl.algo.trained_agent import load_agent

    from app.common import describe_agent

    reach = Path(__file__).resolve().parents[1] / "checkpoints" / "ml1" / "reach-v3"
    text = describe_agent(load_agent(reach / "rl2"))
    assert "1,504,000 env steps" in text and "after 3,000,000 env steps" in text
    assert "after" not in describe_agent(load_agent(reach / "maml"))
