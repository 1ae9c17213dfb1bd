"""The app on a public page, tried as a hostile visitor would (raw HTTP and gradio_client against an
in-process server): checkpoints only from the allowed roots, one neutral message for every other
path; a hostile config.json refused with the server's memory bounded while other users' rollouts go
on; training capped by default; Stop and Resume from any client; a clear message for every bad
input, logged as one line; and a fuzz of malformed inputs over every endpoint."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config
from hostile import call, hostile_config, malformed_inputs, rss_mb, upload

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

NEUTRAL = "not available on this page"
SLOW_S = 4.0


def _save_run(run: Path) -> Path:
    from cmrl.algo.agent import MetaAgent
    from cmrl.runs.checkpoint import save_model
    from cmrl.envs.tasks import ML4_TEST

    agent = MetaAgent(tiny_config("cmrl"), OBS_DIM, ACT_DIM, 384, ML4_TRAIN)
    save_model(run, agent, {"config": agent.config.to_dict(), "agent": "cmrl", "obs_dim": OBS_DIM,
                            "act_dim": ACT_DIM, "text_encoder": {"name": "minilm", "dim": 384},
                            "train_tasks": list(ML4_TRAIN), "test_tasks": list(ML4_TEST)})
    return run


def _fake_python(path: Path, seconds: float) -> Path:
    """Stands in for the interpreter of `python -m cmrl train ...`: sleeps, stops on SIGINT."""
    path.write_text(f"#!{sys.executable}\nimport time\ntime.sleep({seconds})\n")
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from app.ui import App
    from test_app import serving

    base = tmp_path_factory.mktemp("hostile")
    run = _save_run(base / "checkpoints" / "cmrl")
    scratch = base / "scratch"
    scratch.mkdir()
    app = App(checkpoint_roots=[base / "checkpoints"], runs_dir=base / "runs",
              results_root=base / "no-results", hosted=False, extra_roots=[scratch])
    app.jobs.python = "/bin/true"  # launches are accepted but train nothing
    with serving(app) as (url, demo):
        ns = SimpleNamespace(app=app, demo=demo, url=url, run=run, scratch=scratch, base=base)
        ok = call(url, "adapt", _adapt(str(run)))  # warm: agent, text encoder, renderer
        assert ok.kind == "ok", ok
        yield ns


def _adapt(checkpoint, goal="open the drawer", variation=0, episodes=1, horizon=10, **kw):
    args = dict(checkpoint=checkpoint, scene="drawer-open-v3", goal=goal, variation=variation,
                camera="corner", episodes=episodes, eval_episodes=0, horizon=horizon, size=64)
    args.update(kw)
    return list(args.values())


def neutral_answers(url: str, path: str) -> set[str]:
    """What the three endpoints that read a checkpoint answer for `path`: each a clean refusal
    with the neutral message."""
    messages = set()
    for api, args in (("adapt", _adapt(path)),
                      ("compare", [path, "drawer-open-v3", "a", "b", 0, "corner", 1, 10]),
                      ("inspect", [path, ["drawer-open-v3"], 1, 1, 10, "cosine"])):
        a = call(url, api, args)
        assert a.kind == "clean" and NEUTRAL in a.message, (path, api, a)
        messages.add(a.message)
    return messages


def _client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


# -- (2) only the allowed roots, one neutral message ------------------------------------------------
def test_paths_outside_the_roots_get_one_neutral_message(page, tmp_path):
    outside = tmp_path / "elsewhere"
    _save_run(outside)  # a perfectly good run, but outside the roots
    link = page.scratch / "link-out"
    link.symlink_to(outside, target_is_directory=True)
    uploaded = Path(upload(page.url, "config.json", b"{}")).parent
    paths = ["/etc", "/etc/passwd", "/nonexistent/dir", "../../../../etc", "checkpoints/../../..",
             str(outside), str(link), str(uploaded), str(page.scratch / "no-such-run")]
    messages = set().union(*(neutral_answers(page.url, p) for p in paths))
    assert len(messages) == 1  # nothing tells existing from missing, file from folder


def test_hosted_page_loads_only_listed_checkpoints(page):
    from app.common import InputError
    from app.ui import App

    hosted = App(checkpoint_roots=[page.run.parent], runs_dir=page.base / "hosted-runs",
                 hosted=True, extra_roots=[])
    listed = hosted.checkpoints()
    assert listed and hosted._agent(listed[0]).kind == "cmrl"
    for bad in ("/etc", str(page.run / "..")):
        with pytest.raises(InputError, match=NEUTRAL):
            hosted._agent(bad)


# -- (1) a hostile config.json ------------------------------------------------------------------
def test_hostile_config_is_refused_with_memory_bounded_while_rollouts_go_on(page):
    """The upload of a 3 KB config.json describing 10^9 layers, passed as the checkpoint: refused
    by the roots. The same file (and one over the memory budget) inside an allowed root: refused by
    the bounds and the budget. Meanwhile another user's rollout completes; the server's resident
    memory grows by less than 150 MB in all."""
    template = json.loads((page.run / "config.json").read_text())
    model = (page.run / "model.safetensors").read_bytes()
    cases = {"layers": dict(num_layers=10**9), "width": dict(module_width=12000),
             "budget": dict(module_width=4096, embed_dim=4096, num_modules=8)}
    for name, net in cases.items():
        d = page.scratch / f"hostile-{name}"
        d.mkdir()
        (d / "config.json").write_bytes(hostile_config(template, **net))
        (d / "model.safetensors").write_bytes(model)
    rss0, peak, done = rss_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.02)

    rollout = {}

    def normal_user():
        t0 = time.time()
        rollout["answer"] = call(page.url, "adapt", _adapt(str(page.run), horizon=40))
        rollout["seconds"] = time.time() - t0

    threads = [threading.Thread(target=sample), threading.Thread(target=normal_user)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            folder = Path(upload(page.url, "config.json",
                                 hostile_config(template, num_layers=10**9))).parent
            a = call(page.url, "adapt", _adapt(str(folder)))
            assert a.kind == "clean" and NEUTRAL in a.message, a
            for name, fragment in (("layers", "net.num_layers must be from 2 to 16"),
                                   ("width", "net.module_width must be from 1 to 4096"),
                                   ("budget", "budget")):
                a = call(page.url, "adapt", _adapt(str(page.scratch / f"hostile-{name}")))
                assert a.kind == "clean" and fragment in a.message, (name, a)
    finally:
        threads[1].join(timeout=120)
        done.set()
        threads[0].join()
    assert rollout["answer"].kind == "ok", rollout
    assert peak[0] - rss0 < 150, f"resident memory grew {peak[0] - rss0:.0f} MB"


def test_a_slow_load_does_not_block_other_users_rollouts(page, monkeypatch):
    """One visitor's checkpoint takes SLOW_S seconds to load; meanwhile another user's request for
    a loaded checkpoint gets its agent at once and its rollout completes (the load holds no lock
    that rollouts need)."""
    import cmrl

    slow = page.scratch / "slow"
    if not slow.exists():
        _save_run(slow)
    real_load, real_get = cmrl.load_agent, page.app.agents.get
    times = {}

    def slow_load(run, *a, **kw):
        if Path(run).name == "slow":
            times["load_started"] = time.time()
            time.sleep(SLOW_S)
            times["load_ended"] = time.time()
        return real_load(run, *a, **kw)

    def timed_get(run, *a, **kw):
        agent = real_get(run, *a, **kw)
        if Path(run) == page.run.resolve():
            times.setdefault("normal_got_agent", time.time())
        return agent

    monkeypatch.setattr(cmrl, "load_agent", slow_load)
    monkeypatch.setattr(page.app.agents, "get", timed_get)
    t = threading.Thread(target=call, args=(page.url, "adapt", _adapt(str(slow))))
    t.start()
    deadline = time.time() + 60
    while "load_started" not in times and time.time() < deadline:
        time.sleep(0.05)
    a = call(page.url, "adapt", _adapt(str(page.run)))
    t.join(timeout=180)
    assert a.kind == "ok", a
    assert times["load_started"] < times["normal_got_agent"] < times["load_ended"], times


# -- (3) training capped by default -----------------------------------------------------------------
def test_training_is_capped_by_default_and_numbers_are_checked(page, monkeypatch, tmp_path):
    from app.jobs import DEFAULT_MAX_SECONDS, DEFAULT_MAX_STEPS, JobManager, TrainSpec

    for var in ("CMRL_HOSTED", "CMRL_MAX_TRAIN_STEPS", "CMRL_MAX_TRAIN_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    jobs = JobManager(tmp_path / "runs")
    assert (jobs.max_steps, jobs.max_seconds) == (DEFAULT_MAX_STEPS, DEFAULT_MAX_SECONDS)
    spec, notes = jobs.validate(TrainSpec(steps=10**9))
    assert spec.steps == DEFAULT_MAX_STEPS and "capped" in notes[0]
    base = ["pearl", "ml4", 100, 0, "none", "", "cpu", "capped", 10, 1, 0, 0.1, 0, 100]
    for index, value, fragment in (
            (11, float("inf"), "Updates per env step must be a number above 0"),
            (11, 1e308, "Updates per env step must be"), (11, "nan", "Updates per env step"),
            (11, -1, "Updates per env step"), (11, 0, "Updates per env step"),
            (2, 10**400, "Steps must be from 1"), (8, 10**6, "horizon must be from 10 to 500"),
            (9, 1000, "Envs per task must be from 1 to 16"), (3, -1, "seed must be from 0"),
            (10, 10**9, f"Warm-up steps must be from 0 to {page.app.jobs.max_steps}"),
            (5, "/etc", "offline dataset is not available"), (1, ["ml4"], "must be text")):
        args = list(base)
        args[index] = value
        a = call(page.url, "train_launch", args)
        assert a.kind == "clean" and fragment in a.message, (index, value, a)
    assert not (page.app.jobs.runs_dir / "capped").exists()


def test_offline_dataset_must_be_a_cmrl_dataset_inside_the_roots(page, tmp_path):
    from app.jobs import JobError, JobManager, TrainSpec
    from app.roots import Roots
    from cmrl.data import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME

    inside = page.scratch / "datasets"
    (inside / "not-a-dataset").mkdir(parents=True, exist_ok=True)
    good = inside / "good"
    good.mkdir(exist_ok=True)
    (good / MANIFEST_NAME).write_text(json.dumps({
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "benchmark": {}, "tasks": {}}))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / MANIFEST_NAME).write_text((good / MANIFEST_NAME).read_text())
    jobs = JobManager(tmp_path / "runs", roots=Roots([page.run.parent], [page.scratch]))
    spec, _ = jobs.validate(TrainSpec(steps=10, offline=str(good)))
    assert spec.offline == str(good.resolve())
    with pytest.raises(JobError, match="not a dataset made by `python -m cmrl data`"):
        jobs.validate(TrainSpec(steps=10, offline=str(inside / "not-a-dataset")))
    for bad in (str(outside), "/etc", str(inside / "missing")):
        with pytest.raises(JobError, match="dataset is not available on this page"):
            jobs.validate(TrainSpec(steps=10, offline=bad))


def test_wall_time_limit_stops_a_run(tmp_path):
    from app.jobs import JobManager, TrainSpec

    jobs = JobManager(tmp_path / "runs", max_seconds=2,
                      python=str(_fake_python(tmp_path / "py", 60)))
    st, _ = jobs.launch(TrainSpec(agent="pearl", steps=100, name="walltime", device="cpu"))
    assert st.state == "running"
    deadline = time.time() + 30
    while time.time() < deadline and jobs.status("walltime").state != "stopped":
        time.sleep(0.25)
    st = jobs.status("walltime")
    assert st.state == "stopped" and "time limit" in st.message, st


# -- (4) Stop and Resume from any client -------------------------------------------------------------
def test_stop_and_resume_from_a_new_client(page, tmp_path):
    app = page.app
    app.jobs.python = str(_fake_python(tmp_path / "py", 120))
    try:
        status, _ = _client(page.url).predict("pearl", "ml4", 100, 0, "none", "", "cpu", "rt-a",
                                              10, 1, 0, 0.1, 0, 100, api_name="/train_launch")
        assert "Launched **rt-a**" in status
        assert "Stopping" in _client(page.url).predict("rt-a", api_name="/train_stop")
        deadline = time.time() + 30
        while time.time() < deadline and app.jobs.status("rt-a").state != "stopped":
            time.sleep(0.25)
        assert app.jobs.status("rt-a").state == "stopped"
        (app.jobs.run_dir("rt-a") / "state").mkdir()  # as if it had saved a checkpoint
        msg = _client(page.url).predict("rt-a", 200, "cpu", api_name="/train_resume")
        assert "Resumed **rt-a**" in msg
        assert "Stopping" in _client(page.url).predict("rt-a", api_name="/train_stop")
    finally:
        app.jobs.python = "/bin/true"
        for job in app.jobs.running():
            app.jobs.stop(job.name, grace_s=1)


# -- (5) a clear message for each gap -------------------------------------------------------------
def _nested_run(page) -> str:
    d = page.scratch / "nested"
    if not d.exists():
        _save_run(d)
        (d / "config.json").write_text("[" * 50_000 + "]" * 50_000)
    return str(d)


GAPS = [
    ("adapt", lambda p: _adapt(str(p.run), variation=10**400), "goal variation must be from 0 to 49"),
    ("adapt", lambda p: _adapt(str(p.run) + "\x00x"), "control or invisible characters"),
    ("adapt", lambda p: _adapt(str(p.run), goal="close \ud800 window"), "lone surrogate"),
    ("adapt", lambda p: _adapt(str(p.run) + "\udfff"), "lone surrogate"),
    ("adapt", lambda p: _adapt(str(p.run), episodes=None), "Adaptation episodes is empty"),
    ("adapt", lambda p: _adapt(str(p.run), horizon="long"), "episode length must be a whole number"),
    ("adapt", lambda p: _adapt(str(p.run), eval_episodes=[1]), "Evaluation episodes must be"),
    ("compare", lambda p: [str(p.run), "drawer-open-v3", "a", "b", 0, "corner", None, 10],
     "Adaptation episodes is empty"),
    ("compare", lambda p: [str(p.run), "drawer-open-v3", "a", "b", 0, "corner", 1, "x"],
     "episode length must be a whole number"),
    ("inspect", lambda p: [str(p.run), ["drawer-open-v3"], None, 1, 10, "cosine"],
     "Episodes per variation is empty"),
    ("inspect", lambda p: [str(p.run), ["drawer-open-v3"], 1, "two", 10, "cosine"],
     "Goal variations per task must be a whole number"),
    ("inspect", lambda p: [str(p.run), {"a": 1}, 1, 1, 10, "cosine"], "Tasks must be a list"),
    ("inspect", lambda p: [str(p.run), ["drawer-open-v3"], 1, 1, 10, ["x"]], "The similarity must"),
    ("adapt", lambda p: _adapt(str(p.run), goal="\x00\x00"), "control characters"),
    ("adapt", lambda p: _adapt(str(p.run), goal="\u200b\u200b"), "no visible characters"),
    ("compare", lambda p: [str(p.run), "drawer-open-v3", "a", "\u200b", 0, "corner", 1, 10],
     "Goal B: the goal description has no visible characters"),
    ("adapt", lambda p: _adapt(_nested_run(p)), "nested too deeply"),
    ("results", lambda p: ["x" * 10_000, None], "evaluation protocol must be one of cmrl, metaworld"),
    ("results", lambda p: ["cmrl", "ml45"], "benchmark must be one of no-results"),
]


@pytest.mark.parametrize("api, args, fragment", GAPS, ids=[f"{g[0]}-{g[2][:30]}" for g in GAPS])
def test_each_input_gap_gets_its_own_clear_message(page, api, args, fragment):
    a = call(page.url, api, args(page))
    assert a.kind == "clean" and fragment in a.message, a


@pytest.mark.parametrize("index", [0, 1, 2, 4])
def test_long_inputs_are_not_echoed_in_full(page, index):
    args = _adapt(str(page.run))
    args[index] = "y" * 10_000
    a = call(page.url, "adapt", args)
    assert a.kind == "clean" and len(a.message) < 300 and "y" * 100 not in a.message, a


# -- (6) user errors logged as one line --------------------------------------------------------------
def test_user_errors_are_logged_as_one_line_without_traceback(page, capfd):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("cmrl.app")
    logger.addHandler(handler)
    try:
        bad = [("adapt", _adapt("/etc")), ("adapt", _adapt(str(page.run), variation="x")),
               ("inspect", [str(page.run), [], 1, 1, 10, "cosine"]), ("results", [None, None])]
        bad += [("train_stop", ["nobody"]), ("adapt", _adapt(str(page.run), camera="fisheye"))]
        for api, args in bad:
            assert call(page.url, api, args).kind in ("clean", "ok")
    finally:
        logger.removeHandler(handler)
    refused = [r for r in records if r.getMessage().startswith("refused:")]
    assert len(refused) == len(bad) - 1  # results(None) shows the default protocol
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in refused)
    assert "Traceback" not in capfd.readouterr().err


def test_allowed_roots_from_flag_and_environment(monkeypatch, tmp_path):
    import importlib.util

    from app.roots import Roots

    monkeypatch.setenv("CMRL_ALLOWED_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    spec = importlib.util.spec_from_file_location(
        "app_main", Path(__file__).resolve().parents[1] / "app.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setattr("app.ui.build", lambda **kw: None)  # importing app.py builds the page
    spec.loader.exec_module(module)
    roots = module.options(["--allow-root", str(tmp_path / "c")])["extra_roots"]
    assert [Path(r) for r in roots] == [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    run = _save_run(tmp_path / "c" / "run")
    assert Roots(extra_roots=roots).checkpoint(str(run)) == run.resolve()
    from app.common import InputError

    with pytest.raises(InputError, match=NEUTRAL):
        Roots(extra_roots=[]).checkpoint(str(run))


# -- fuzz ----------------------------------------------------------------------------------------
def test_fuzz_malformed_inputs_across_all_endpoints(page, capfd):
    """220 generated malformed inputs over every endpoint, four at a time: no uncaught exception,
    every refusal a short message of the app's own, no traceback logged, and the server healthy
    afterwards (a normal rollout completes, no rollout left running, the sessions gradio keeps in
    memory capped: each anonymous call makes one)."""
    from concurrent.futures import ThreadPoolExecutor

    from app.ui import STATE_SESSIONS

    cases = malformed_inputs(str(page.run), n=220, seed=1)
    assert len({api for api, _ in cases}) == 11
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda c: (c, call(page.url, *c)), cases))
    uncaught = [(c, a) for c, a in answers if a.kind == "uncaught"]
    assert not uncaught, uncaught[:5]
    clean = [a for _, a in answers if a.kind == "clean"]
    assert len(clean) >= 200
    assert all(len(a.message) <= 800 and "Value:" not in a.message for a in clean)
    assert "Traceback" not in capfd.readouterr().err
    for job in page.app.jobs.running():
        page.app.jobs.stop(job.name, grace_s=1)
    ok = call(page.url, "adapt", _adapt(str(page.run), horizon=20))
    assert ok.kind == "ok", ok
    deadline = time.time() + 20
    while time.time() < deadline and (page.app.sessions.active() or any(
            t.name.startswith("rollout-") for t in threading.enumerate())):
        time.sleep(0.2)
    assert page.app.sessions.active() == 0
    assert len(page.demo.state_holder.session_data) <= STATE_SESSIONS < len(cases)
