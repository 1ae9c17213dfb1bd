"""The public page, second pass (issue 28), tried against an in-process server:

- a request that fits no endpoint (too few or too many values, a value gradio itself rejects, a
  private endpoint called by name or by index, an unknown name or index) gets the page's one-line
  refusal, logged as one line, no traceback;
- no file is opened through a link that leads out of the allowed roots: such a run directory or
  dataset gets the message a path outside the roots gets, and is not listed;
- numbers are read from ASCII digits only; a goal text is cleaned or refused, and the page says
  which text it used;
- what a finished rollout freed goes back to the system; a checkpoint header is bounded before it
  is parsed (tests/test_library_bounds.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hostile import call, join, post
from test_app_hostile import neutral_answers
from test_app_hostile import page as hostile_page  # noqa: F401 (a fixture)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MALFORMED = "Malformed request"


@pytest.fixture(scope="module")
def page(hostile_page):
    """The hostile tests' page (tests/test_app_hostile.py), and a folder under no root holding a
    valid run."""
    from test_app_hostile import _save_run

    outside = hostile_page.base / "outside"
    if not outside.exists():
        _save_run(outside / "run")
    return SimpleNamespace(**vars(hostile_page), outside=outside)


@pytest.fixture
def page_log():
    """The page's log records (`cmrl.app`) while the test runs."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("cmrl.app")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _adapt(checkpoint, goal="open the drawer", variation=0):
    return [str(checkpoint), "drawer-open-v3", goal, variation, "corner", 1, 0, 10, 64]


def _fn(demo, name: str, visibility: str | None = None):
    """The index and the event of the page's first event handler called `name`."""
    for i, fn in demo.fns.items():
        if fn.name == name and (visibility is None or fn.api_visibility == visibility):
            return i, fn
    raise KeyError(name)


def _one_line_each(records, n: int) -> None:
    refused = [r for r in records if r.getMessage().startswith("refused:")]
    assert len(refused) == n, [r.getMessage() for r in refused]
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in refused)


# -- (1) one answer for malformed requests -----------------------------------------------------------
def test_too_few_or_too_many_values_get_the_page_refusal(page, page_log, capfd):
    """Every public endpoint, sent no values, one value too few and one too many, as raw POSTs."""
    public = {fn.api_name: fn for fn in page.demo.fns.values()
              if fn.api_visibility == "public" and fn.fn is not None and fn.inputs}
    assert {"adapt", "compare", "inspect", "train_launch", "results"} <= set(public)
    sent = 0
    for api, fn in public.items():
        n = sum(not b.skip_api for b in fn.inputs)
        for data in ([], [None] * (n - 1), ["x"] * (n + 1)):
            if len(data) == n:
                continue
            a = call(page.url, api, data)
            sent += 1
            assert a.kind == "clean", (api, data, a)
            assert a.message.startswith(MALFORMED) and f"takes {n} value" in a.message, a
            assert f"got {len(data)}" in a.message and "\n" not in a.message
    _one_line_each(page_log, sent)
    assert "Traceback" not in capfd.readouterr().err


def test_a_value_gradio_rejects_gets_the_page_refusal(page, page_log, capfd):
    """A file reference to a server path the page never handed out, in place of a text."""
    forged = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    a = call(page.url, "adapt", [forged] + _adapt(page.run)[1:])
    assert a.kind == "clean" and a.message.startswith(MALFORMED), a
    _one_line_each(page_log, 1)
    assert "Traceback" not in capfd.readouterr().err


def test_private_endpoints_answer_only_their_own_trigger(page, page_log, capfd):
    """checkpoint_info (private) by name through /call, by index through the queue without a
    trigger or with another component as trigger: refused as if it did not exist. Called as the
    page calls it (its index, its own dropdown as trigger) it answers."""
    index, fn = _fn(page.demo, "checkpoint_info", "private")
    own = fn.targets[0][0]
    other, _ = _fn(page.demo, "refresh_checkpoints")
    other_trigger = page.demo.fns[other].targets[0][0]
    answers = [call(page.url, "checkpoint_info", [str(page.run)]),
               join(page.url, index, [str(page.run)])[0],
               join(page.url, index, [str(page.run)], trigger_id=other_trigger)[0]]
    for a in answers:
        assert a.kind == "clean" and a.message.startswith(MALFORMED), a
        assert "no such endpoint" in a.message
    messages = {a.message for a in answers}
    assert len(messages) == 1
    a, _ = join(page.url, index, [str(page.run)], trigger_id=own)
    assert a.kind == "ok", a
    # Every other private endpoint wired to a component is refused by name too.
    for fn in page.demo.fns.values():
        if (fn.api_visibility == "private" and fn.fn is not None and fn.api_name
                and not all(ev == "load" for _, ev in fn.targets)):
            a = call(page.url, fn.api_name, [None] * len(fn.inputs))
            assert a.kind == "clean" and a.message in messages, (fn.api_name, a)
    assert "Traceback" not in capfd.readouterr().err
    assert all("Traceback" not in r.getMessage() for r in page_log)


def test_unknown_endpoints_get_http_400_and_one_log_line(page, page_log, capfd):
    cases = [("call/no_such_endpoint", {"data": []}),
             ("call/v2/no_such_endpoint", {}),
             ("queue/join", {"data": [], "fn_index": 9999, "session_hash": "s1"}),
             ("queue/join", {"data": [], "fn_index": -1, "session_hash": "s2"})]
    for path, body in cases:
        a = post(page.url, path, body)
        assert a.kind == "refused" and a.message.startswith(MALFORMED), (path, a)
    _one_line_each(page_log, len(cases))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI application" not in err


# -- (2) no file read through a link out of the roots -----------------------------------------------
@pytest.fixture
def opened():
    """Paths the test process opens while the test runs (the server runs in it), from Python's
    audit hook. A hook cannot be removed: it records only while the list is active."""
    record = _audit.setdefault("record", None)
    if record is None:
        sys.addaudithook(_audit_hook)
    seen: list[str] = []
    _audit["record"] = seen
    yield seen
    _audit["record"] = []


_audit: dict = {}


def _audit_hook(event, args):
    record = _audit.get("record")
    if record is not None and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
        record.append(os.fsdecode(args[0]))


def _linked_runs(page) -> dict[str, Path]:
    """Run directories inside an allowed root, each with one file or folder linked out of it."""
    good, far = page.run, page.outside / "run"
    made = {}
    for name, link, target in [("cfg-passwd", "config.json", Path("/etc/passwd")),
                               ("cfg-environ", "config.json", Path("/proc/self/environ")),
                               ("cfg-outside", "config.json", far / "config.json"),
                               ("model-outside", "model.safetensors", far / "model.safetensors"),
                               ("folder-outside", "state", far)]:
        d = page.scratch / "linked" / name
        if not d.exists():
            d.mkdir(parents=True)
            for f in ("config.json", "model.safetensors"):
                if f != link:
                    shutil.copy(good / f, d / f)
            (d / link).symlink_to(target)
        made[name] = d
    return made


def test_files_linked_out_of_the_roots_are_refused_unopened(page, opened):
    """A run directory inside an allowed root whose config.json links to /etc/passwd,
    /proc/self/environ or a valid config outside the roots, whose weights link outside, or holding
    a folder linked outside: every endpoint that reads a checkpoint answers exactly what it answers
    for a path outside the roots, the run is not listed, and the server never opened the targets.
    (The page's own reads are seen: reading a good run's horizon opens its config.json.)"""
    from app.common import find_checkpoints

    runs = _linked_runs(page)
    h_index, h_fn = _fn(page.demo, "horizon_update")
    messages = set()
    for path in [*map(str, runs.values()), "/nonexistent/dir"]:
        messages |= neutral_answers(page.url, path)
        assert join(page.url, h_index, [path], trigger_id=h_fn.targets[0][0])[0].kind == "ok"
    assert len(messages) == 1
    listed = set(find_checkpoints(page.app.roots)) | set(page.app.checkpoints())
    assert listed and not listed & {str(d.resolve()) for d in runs.values()}
    outside = (str(page.outside.resolve()), "/etc/passwd", "/proc/self/environ")
    assert not [p for p in opened if os.path.realpath(p).startswith(outside)], opened
    assert join(page.url, h_index, [str(page.run)],
                trigger_id=h_fn.targets[0][0])[0].kind == "ok"
    assert os.path.realpath(page.run / "config.json") in map(os.path.realpath, opened)


def test_dataset_with_a_file_linked_out_is_refused(page, tmp_path):
    from app.roots import Roots
    from app.common import InputError
    from cmrl.data import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME

    manifest = json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                           "benchmark": {}, "tasks": {}})
    far = tmp_path / "far"
    (far / "data").mkdir(parents=True)
    (far / MANIFEST_NAME).write_text(manifest)
    (far / "data" / "main_data.hdf5").write_bytes(b"\0" * 16)
    roots = Roots([page.run.parent], [page.scratch])
    base = page.scratch / "datasets-linked"
    good, linked_manifest, deep = base / "good", base / "manifest", base / "deep"
    for d in (good, linked_manifest, deep):
        (d / "cmrl" / "ml4-task-v0" / "data").mkdir(parents=True, exist_ok=True)
    (good / MANIFEST_NAME).write_text(manifest)
    (linked_manifest / MANIFEST_NAME).symlink_to(far / MANIFEST_NAME)
    (deep / MANIFEST_NAME).write_text(manifest)
    (deep / "cmrl" / "ml4-task-v0" / "data" / "main_data.hdf5").symlink_to(
        far / "data" / "main_data.hdf5")
    assert roots.dataset(str(good)) == good.resolve()
    with pytest.raises(InputError, match="dataset is not available on this page") as outside:
        roots.dataset(str(far))
    for bad in (linked_manifest, deep):
        with pytest.raises(InputError) as e:
            roots.dataset(str(bad))
        assert str(e.value) == str(outside.value)


def test_folder_links_inside_the_roots_are_followed_and_big_folders_refused(page, tmp_path):
    from app.common import MAX_FOLDER_ENTRIES, InputError, leaves_roots
    from app.roots import Roots

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "to-b").symlink_to(root / "b", target_is_directory=True)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    assert leaves_roots(root / "a", [root]) is None
    (root / "b" / "secret").symlink_to("/etc/passwd")  # reached only through a/to-b
    assert leaves_roots(root / "a", [root]) == "link"
    assert leaves_roots(root / "b", [root], max_entries=0) == "size"
    big = page.scratch / "big"
    if not big.exists():
        big.mkdir()
        for i in range(MAX_FOLDER_ENTRIES + 1):
            (big / str(i)).touch()
    with pytest.raises(InputError, match=f"more than {MAX_FOLDER_ENTRIES:,} files"):
        Roots([page.run.parent], [page.scratch]).checkpoint(str(big))


def test_results_are_not_read_through_a_link_out(tmp_path):
    from app.results import load_results

    root = tmp_path / "results"
    root.mkdir()
    (tmp_path / "far.json").write_text(json.dumps({"agents": {"cmrl": {}}}))
    (root / "results.json").symlink_to(tmp_path / "far.json")
    res = load_results(root)
    assert res.empty and "link" in res.problems[0]


# -- (3) numbers and goal texts ---------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("12", 12), (" 7 ", 7), ("+3", 3), ("-0", 0), ("1e1", 10),
                                         ("3.0", 3), ("5.", 5)])
def test_numbers_in_ascii_digits_are_read(text, value):
    from app.common import parse_int

    assert parse_int(text, "N", -10, 100) == value


@pytest.mark.parametrize("text, digits", [("٣", True), ("１２", True), ("۱۲", True), ("1_0", False),
                                          ("nan", False), ("inf", False), ("0x1f", False),
                                          ("1 2", False), ("²", True)])
def test_numbers_in_other_digits_are_refused(text, digits):
    from app.common import InputError, parse_float, parse_int

    for parse in (parse_int, parse_float):
        with pytest.raises(InputError) as e:
            parse(text, "N", 0, 100)
        assert ("written with the digits 0-9" in str(e.value)) == digits, str(e.value)


def test_numbers_in_other_digits_are_refused_by_the_page(page):
    a = call(page.url, "adapt", _adapt(page.run, variation="٣"))
    assert a.kind == "clean" and "goal variation must be a whole number" in a.message, a
    assert "digits 0-9" in a.message


@pytest.mark.parametrize("goal, used, note", [
    ("close the window", "close the window", None),
    ("close\u200b the\u200d window", "close the window", "2 invisible characters dropped"),
    ("\u202eclose the window", "close the window", "1 invisible character dropped"),
    ("ｃｌｏｓｅ the window", "close the window", "NFKC"),
    ("NaN", "NaN", "describes no goal"),
    ("1e9999", "1e9999", "describes no goal"),
    ("?!", "?!", "describes no goal"),
])
def test_goal_text_used_and_said(goal, used, note):
    from app.common import parse_goal_text

    text, said = parse_goal_text(goal)
    assert text == used
    assert (said is None) if note is None else (note in said and repr(used) in said)


@pytest.mark.parametrize("goal, fragment", [
    ("a" + "\u200b" * 5, "mostly invisible characters"), ("\u200b\u200b", "no visible characters"),
    ("close\x00window", "control characters"), ("close \ud800", "lone surrogate")])
def test_goal_text_refused(goal, fragment):
    from app.common import InputError, parse_goal_text

    with pytest.raises(InputError, match=fragment):
        parse_goal_text(goal)


def test_the_page_says_which_goal_text_it_used(page):
    """Through the queue as the page sends it: the rollout runs on the cleaned text, and the page
    shows a note naming it; a control-heavy text is refused."""
    index, fn = _fn(page.demo, "adapt", "public")
    trigger = fn.targets[0][0]
    a, messages = join(page.url, index, _adapt(page.run, goal="open\u200b the\u200b drawer"),
                       trigger_id=trigger)
    assert a.kind == "ok", a
    notes = [m.get("log", "") for m in messages if m.get("msg") == "log"]
    assert any("Goal text used: 'open the drawer'" in n for n in notes), notes
    a, _ = join(page.url, index, _adapt(page.run, goal="x" + "\u2060" * 20), trigger_id=trigger)
    assert a.kind == "clean" and "mostly invisible" in a.message, a


# -- (4) what a finished request leaves behind --------------------------------------------------------
def test_a_finished_rollout_releases_memory(page, monkeypatch):
    """Every rollout's end triggers `release_memory` (gc + malloc_trim), in a thread of its own."""
    import app.common as common

    calls = []
    monkeypatch.setattr(common, "release_memory", lambda: calls.append(time.time()))
    a = call(page.url, "adapt", _adapt(page.run))
    assert a.kind == "ok", a
    deadline = time.time() + 10
    while not calls and time.time() < deadline:
        time.sleep(0.05)
    assert calls


def test_release_memory_returns_what_closed_envs_freed():
    """Rendering envs built and closed leave most of their memory resident until malloc_trim."""
    from app.common import release_memory
    from cmrl.envs.metaworld_env import make_scene

    def rss():
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024

    warm, variations = make_scene("drawer-close-v3", horizon=10, render=True, size=64)
    warm.reset(variations[0])
    warm.render()  # what the first env of a process loads once (modules, GL) is not counted
    warm.close()
    release_memory()
    before = rss()
    envs = []
    for task in ("drawer-open-v3", "window-close-v3"):
        env, variations = make_scene(task, horizon=10, render=True, size=64)
        env.reset(variations[0])
        env.render()
        envs.append(env)
    for env in envs:
        env.close()
    del envs, env
    grown = rss() - before
    release_memory()
    after = rss() - before
    assert grown > 20, grown  # two rendering envs cost tens of MB
    assert after < grown / 2, (grown, after)


def test_train_tab_shows_nothing_of_a_run_file_linked_out(page):
    """An app run whose metrics.jsonl and train.log link outside the roots: the Train tab's
    refresh shows neither (no curves, no log). (The jobs layer's own watcher still reads its
    runs' files as they are: app/jobs.py, app/job_backends.py.)"""
    from hostile import endpoints

    args = endpoints("")["train_launch"]
    args[7] = "linked-job"
    assert call(page.url, "train_launch", args).kind == "ok"
    run = page.app.jobs.run_dir("linked-job")
    secret = page.outside / "secret"
    secret.mkdir(exist_ok=True)
    (secret / "metrics.jsonl").write_text(json.dumps({"step": 1, "SECRET": 1}) + "\n")
    (secret / "train.log").write_text("SECRET line\n")
    for name in ("metrics.jsonl", "train.log"):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(secret / name)
    out = page.app.train_refresh("linked-job", None, {})
    assert "SECRET" not in repr(out)
    for name in ("metrics.jsonl", "train.log"):  # the same run, its files its own: shown
        (run / name).unlink()
        shutil.copy(secret / name, run / name)
    assert "SECRET" in repr(page.app.train_refresh("linked-job", None, {}))
