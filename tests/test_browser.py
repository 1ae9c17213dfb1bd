"""A real browser (Debian chromium driven by Playwright): open the page, type a goal, press Run,
wait for a routing heatmap and a rendered frame; launch the quick recipe (smoke size) in the Train
tab, watch its progress bar and first curve point, stop it. Screenshots are test artifacts."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.test_app import recipe_data_root, serving, tiny_app_run

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]


def _skip_reason() -> str | None:
    if not (os.path.isfile(CHROMIUM) or shutil.which("chromium")):
        return (f"Debian chromium is not installed at {CHROMIUM} (`apt-get install chromium`, or "
                "`bash scripts/setup.sh --dev`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (requirements-dev.txt)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from app.ui import App

    run = tiny_app_run(tmp_path_factory)
    app = App(checkpoint_roots=[run.parent], runs_dir=tmp_path_factory.mktemp("browser-runs"),
              results_root=tmp_path_factory.mktemp("no-results"), default=str(run))
    # Recipes at smoke size; the online phase of offline-online outlasts the first curve point
    # by long enough to be stopped, on an idle machine too.
    app.jobs.recipe_smoke = (200, 1)
    app.jobs.data_root = recipe_data_root(tmp_path_factory)
    with serving(app) as (url, _):
        yield app, url


@pytest.fixture(scope="module")
def page_url(served):
    return served[1]


def _chromium(p):
    return p.chromium.launch(executable_path=CHROMIUM if os.path.isfile(CHROMIUM)
                             else shutil.which("chromium"), args=ARGS)


def test_browser_adapt_run_shows_heatmap_and_frame(page_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = _chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(page_url, wait_until="domcontentloaded", timeout=60_000)
            goal = page.get_by_label("goal description (free text)")
            goal.wait_for(timeout=60_000)
            goal.fill("please close the window")
            page.get_by_role("button", name="Run", exact=True).click()
            # A plotly heatmap (svg layer) and a rendered frame appear while it streams.
            page.wait_for_selector(".js-plotly-plot g.heatmaplayer image", timeout=120_000)
            page.wait_for_selector("#frame img[src*='frame']", timeout=120_000)
            # The frame keeps changing; a loaded one (224 px wide) shows up within a few frames.
            page.wait_for_function("() => { const i = document.querySelector('#frame img'); "
                                   "return i && i.complete && i.naturalWidth === 224; }",
                                   timeout=30_000, polling=20)
            page.wait_for_timeout(1000)
            status = page.get_by_text("transitions in context").first.inner_text()
            assert "Episode" in status
            page.screenshot(path=str(ARTIFACTS / "browser_adapt.png"), full_page=True)
            page.get_by_role("button", name="Cancel").first.click()
        finally:
            browser.close()
    assert (ARTIFACTS / "browser_adapt.png").stat().st_size > 10_000


def test_browser_train_recipe_progress_curve_and_stop(served):
    """Train tab: launch a recipe with the default controls, see the progress bar, the first point
    of the training curves, then Stop it."""
    from playwright.sync_api import sync_playwright

    app, url = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = _chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(url, wait_until="domcontentloaded", timeout=60_000)
            page.get_by_role("tab", name="Train").click()
            # the default recipe is quick; pick offline-online, whose online phase runs on after
            # the offline phase's curve point, so there is something to stop
            page.get_by_label("offline then online").check()
            page.get_by_role("button", name="estimate").wait_for(timeout=30_000)
            page.get_by_role("button", name="Launch", exact=True).click()
            page.wait_for_selector("#train-progress .train-bar", timeout=120_000)
            page.wait_for_selector("#train-curves .js-plotly-plot g.scatterlayer g.trace",
                                   timeout=600_000)  # generous: a loaded CPU
            names = app.jobs.names()
            assert len(names) == 1 and app.jobs.status(names[0]).state == "running"
            page.screenshot(path=str(ARTIFACTS / "browser_train.png"), full_page=True)
            page.get_by_role("button", name="Stop", exact=True).click()
            page.get_by_text("Stopping").first.wait_for(timeout=30_000)
        finally:
            browser.close()
    deadline = time.time() + 60
    while time.time() < deadline and app.jobs.status(names[0]).alive:
        time.sleep(0.5)
    assert app.jobs.status(names[0]).state == "stopped"
    assert (ARTIFACTS / "browser_train.png").stat().st_size > 10_000
