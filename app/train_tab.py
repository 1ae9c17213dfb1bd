"""The Train tab: pick a recipe (or the trainer's flags), launch it as its own process (or as a
job on a Ray cluster, with CMRL_RAY_ADDRESS), follow, stop, cancel or resume it. A recipe's
description, its time estimate and a run's progress panel are text and HTML made here; every number
comes from `cmrl` (`cmrl.experiments.recipes`, the run's `status.json`) or from `jobs.py`, which
owns the jobs.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path

import gradio as gr

from cmrl.config import config_fields
from cmrl.runs.logger import read_metrics

from .base import PageBase, page_error
from .common import (ROOT, InputError, clean_text, display_path, find_checkpoints, parse_choice,
                     parse_float, parse_int, resolve_path, shown)
from .figures import message_figure, training_figure
from .inputs import DropdownInput, NumberInput, RadioInput
from .jobs import (AGENTS, CUSTOM, DEVICES, LAUNCH_CONFIG, PRIOR_DATA, UPDATES_PER_STEP, JobError,
                   JobStatus, RecipeSpec, TrainSpec, log_tail)
from .roots import inside

CUSTOM_FIELDS = ("train.agent", "train.steps", "train.prior_data", "train.offline",
                 "benchmark.horizon", "train.envs_per_task", "train.warmup_steps",
                 "train.updates_per_step", "train.eval_every", "train.checkpoint_every")
"""The custom run's inputs, in the order `train_launch` takes them (after the shared benchmark,
seed, device and name): each is built from its config field, with the field's type, choices,
default and docstring (`cmrl.config.config_fields`), so the form says what the trainer does."""
FILLED = ("train.agent", "train.steps", "train.prior_data")
"""The custom inputs that start filled in with the config's default; the others start empty,
meaning the trainer's default."""


def field_input(name: str):
    """The form input of config field `name`: a dropdown of its choices, a whole or decimal number,
    or text; labelled with the field's name and, when it starts empty, its default; its docstring's
    first sentence as the help line."""
    info = next(f for f in config_fields() if f.name == name)
    label = name.split(".", 1)[1].replace("_", " ")
    value = info.default if name in FILLED else None
    if value is None and info.default is not None:
        label += f" (empty: {info.default:,})" if isinstance(info.default, int) else \
            f" (empty: {info.default})"
    help_line = info.doc.split(". ")[0].rstrip(".")
    help_line = help_line if len(help_line) <= 160 else help_line[:159] + "…"
    if info.choices:
        return DropdownInput(list(info.choices), value=value, label=label, info=help_line)
    if info.type.startswith("int"):
        return NumberInput(value, precision=0, label=label, info=help_line)
    if info.type.startswith("float"):
        return NumberInput(value, label=label, info=help_line)
    return gr.Textbox(value or "", label=label + " (optional)", info=help_line)


def device_summary() -> str:
    """Which device `--device auto` picks here, in words."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"cuda: {torch.cuda.get_device_name(0)} (GPU; `auto` uses it)"
        return f"cpu: {os.cpu_count()} cores, torch {torch.__version__}; no CUDA device (`auto` uses the CPU)"
    except Exception as e:  # noqa: BLE001
        return f"unknown ({e})"


def recipe_choices() -> list[tuple[str, str]]:
    """(title, name) of the library's recipes, then custom."""
    from cmrl.experiments.recipes import RECIPES

    return [(r.title, r.name) for r in RECIPES.values()] + [
        ("custom (the trainer's flags)", CUSTOM)]


def format_seconds(s: float | None) -> str:
    """1 h 05 min, 4 min 10 s, 12 s."""
    if s is None:
        return "?"
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


PHASE_WORDS = {"data": "making data", "offline": "offline training", "online": "online training"}
STATE_COLOURS = {"running": "#2b7bd6", "stopping": "#d6892b", "finished": "#2e9e4f",
                 "failed": "#c9372c", "stopped": "#8a8a8a", "interrupted": "#8a8a8a",
                 "queued": "#8a8a8a", "cancelled": "#8a8a8a"}


def recipe_summary(name: str) -> str:
    """The recipe's title, summary and phases, from `cmrl.experiments.recipes.RECIPES` (custom: the flags)."""
    from cmrl.experiments.recipes import RECIPES

    if name == CUSTOM or name not in RECIPES:
        return ("**custom**: `python -m cmrl train` with the flags in the *custom run* section "
                "below (online from scratch by default; on a CPU that learns little in an hour).")
    r = RECIPES[name]
    phases = " → ".join(PHASE_WORDS.get(p.name, p.name) for p in r.phases())
    return f"**{r.title}**: {r.summary}.  \nPhases: {phases}."


def estimate_text(recipe: str, benchmark: str, device: str, est: dict) -> str:
    """`cmrl.experiments.recipes.estimate_seconds`'s answer in words."""
    parts = ", ".join(f"{PHASE_WORDS.get(k, k)} {format_seconds(v)}"
                      for k, v in est.get("phases", {}).items())
    return (f"**Estimate** for `{recipe}` on {benchmark}, device {est.get('device') or device}: "
            f"about **{format_seconds(est.get('total_s'))}** ({parts}). Updates timed on this "
            "machine just now; a guide, not a promise.")


def progress_html(st: JobStatus | None) -> str:
    """The selected run's panel: state, phases, a progress bar with step/total, rate and ETA,
    device and precision, and the message of a failed run."""
    if st is None:
        return "<div id='train-progress'><em>Pick a run launched from this page to follow it.</em></div>"
    e = html.escape
    colour = STATE_COLOURS.get(st.state, "#8a8a8a")
    head = (f"<b>{e(st.name)}</b> · <span class='train-state' style='color:{colour}'>"
            f"<b>{e(st.state)}</b></span> · {e(st.what)} · {e(st.benchmark)}")
    lines = [head]
    if st.state == "queued":
        lines.append(f"queued (position {st.queue_position}): starts when the running run ends"
                     if st.queue_position else "pending on the Ray cluster: it starts when the "
                     "cluster has the CPUs (and GPU) it asks for")
    if st.phases:
        steps = [f"<b><u>{e(PHASE_WORDS.get(p, p))}</u></b>" if p == st.phase
                 else e(PHASE_WORDS.get(p, p)) for p in st.phases]
        lines.append("phases: " + " → ".join(steps))
    frac = st.fraction
    if frac is not None and st.state != "queued":
        pct = 100 * frac
        lines.append(
            f"<div class='train-bar' style='background:#e6e6e6;border-radius:5px;height:16px;"
            f"width:100%;overflow:hidden' title='{pct:.0f}%'><div class='train-bar-fill' "
            f"style='width:{pct:.1f}%;background:{colour};height:100%'></div></div>")
        rate = f" · {st.rate:,.1f} {e(st.unit)}/s" if st.rate else ""
        eta = f" · ETA {format_seconds(st.eta_s)}" if st.alive and st.eta_s is not None else ""
        lines.append(f"<span class='train-steps'>{st.step:,} / {st.target_steps:,} "
                     f"{e(st.unit)} ({pct:.0f}%)</span>{rate}{eta}")
    dev = f"device {e(st.device)}" + (f" · precision {e(st.precision)}" if st.precision else "")
    lines.append(dev)
    if st.message and st.state in ("failed", "stopped", "cancelled", "interrupted"):
        lines.append(f"<pre style='white-space:pre-wrap'>{e(st.message[-1500:])}</pre>")
    return "<div id='train-progress'>" + "<br>".join(lines) + "</div>"


class TrainTab(PageBase):
    def train_launch(self, agent, benchmark, steps, seed, prior_data, offline, device, name,
                     horizon, envs_per_task, warmup_steps, updates_per_step, eval_every,
                     checkpoint_every):
        try:
            def blank(v) -> bool:
                return v is None or (isinstance(v, str) and not v.strip())

            def opt_int(v, what, field):
                return None if blank(v) else parse_int(v, what, *self.jobs.limits(field))

            def opt_text(v, what):
                return None if blank(v) else clean_text(v, what)

            spec = TrainSpec(agent=parse_choice(agent, "The agent", AGENTS),
                             benchmark=clean_text(benchmark, "The benchmark", 80),
                             steps=parse_int(steps, "Steps", 1, 10**9),
                             seed=parse_int(seed, "The seed", *self.jobs.limits("seed")),
                             prior_data=parse_choice(prior_data, "Prior data", PRIOR_DATA),
                             offline=opt_text(offline, "The offline dataset"),
                             device=parse_choice(device, "The device", DEVICES),
                             name=opt_text(name, "The run name"),
                             horizon=opt_int(horizon, "The horizon", "horizon"),
                             envs_per_task=opt_int(envs_per_task, "Envs per task", "envs_per_task"),
                             warmup_steps=opt_int(warmup_steps, "Warm-up steps", "warmup_steps"),
                             updates_per_step=None if blank(updates_per_step) else parse_float(
                                 updates_per_step, "Updates per env step", *UPDATES_PER_STEP),
                             eval_every=opt_int(eval_every, "Evaluate every", "eval_every"),
                             checkpoint_every=opt_int(checkpoint_every, "Checkpoint every",
                                                      "checkpoint_every"))
            st, notes = self.jobs.launch(spec)
        except (InputError, JobError) as e:
            raise page_error(e)
        return self._launched(st, notes)

    def _launched(self, st, notes):
        for n in notes:
            gr.Warning(n)
        if st.state == "queued" and st.queue_position:
            text = (f"Queued **{st.name}** (position {st.queue_position}): it starts when the "
                    f"running run ends. `{st.command}`")
        else:
            logs = ("Ray's job log" if st.where.startswith("Ray") else
                    f"`{display_path(st.run_dir / 'train.log')}`")
            text = f"Launched **{st.name}** ({st.where}): `{st.command}`  \nlogs: {logs}"
        if st.recipe is None and st.target_steps:
            text += (f"  \ntrains: {st.agent} on {st.benchmark}, {st.target_steps:,} steps, "
                     f"device {st.device} (the checked config: "
                     f"`{display_path(st.run_dir / LAUNCH_CONFIG)}`)")
        if notes:
            text += "  \n" + "  \n".join(f"note: {n}" for n in notes)
        return text, gr.update(choices=self.run_choices(), value=st.name)

    def train_recipe(self, recipe, benchmark, seed, device, name):
        """Launches a library recipe (`python -m cmrl recipe ...`), or queues it while a run runs."""
        try:
            choices = [v for _, v in recipe_choices()]
            recipe = parse_choice(recipe, "The recipe", choices)
            if recipe == CUSTOM:
                raise InputError("The custom recipe launches with the trainer's flags: open "
                                 "*custom run* and press **Launch custom run** (API: train_launch).")
            spec = RecipeSpec(recipe=recipe,
                              benchmark=clean_text(benchmark, "The benchmark", 80),
                              seed=parse_int(seed, "The seed", *self.jobs.limits("seed")),
                              device=parse_choice(device, "The device", DEVICES),
                              name=None if name is None or (isinstance(name, str)
                                                            and not name.strip())
                              else clean_text(name, "The run name"))
            st, notes = self.jobs.launch(spec)
        except (InputError, JobError) as e:
            raise page_error(e)
        return self._launched(st, notes)

    def train_cancel(self, run):
        """Drops a queued run from the queue; a running one is stopped (like Stop)."""
        try:
            name = self._job_name(run)
            was = self.jobs.status(name).state
            st = self.jobs.stop(name)
        except (InputError, JobError) as e:
            raise page_error(e)
        if was == "queued":
            return f"Cancelled **{st.name}**: it left the queue without running."
        return f"Stopping **{st.name}** ({self.jobs.backend.stop_words})."

    def train_estimate(self, recipe, benchmark, device):
        """How long the recipe takes on this machine (`cmrl.experiments.recipes.estimate_seconds`: a few
        updates timed here, a couple of seconds); cached per recipe, benchmark and device."""
        try:
            choices = [v for _, v in recipe_choices()]
            recipe = parse_choice(recipe, "The recipe", choices)
            if recipe == CUSTOM:
                return "No estimate for a custom run (its length depends on the flags)."
            if self.hosted:
                raise InputError("Training is switched off on this hosted demo page, so there is "
                                 "nothing to estimate.")
            benchmark = clean_text(benchmark, "The benchmark", 80)
            device = parse_choice(device, "The device", DEVICES)
            key = (recipe, benchmark, device)
            if key not in self._estimates:
                from cmrl.experiments.recipes import DATA_CACHE, estimate_seconds, get_recipe

                spec, _, _ = self.jobs.validate_recipe(RecipeSpec(recipe, benchmark, 0, device))
                est = estimate_seconds(get_recipe(spec.recipe), spec.benchmark, spec.device,
                                       self.jobs.data_root or (ROOT / DATA_CACHE))
                self._estimates[key] = estimate_text(recipe, benchmark, device, est)
            return self._estimates[key]
        except (InputError, JobError) as e:
            raise page_error(e)

    def train_recipe_changed(self, recipe, benchmark, device):
        """The recipe's description, its cached estimate (else how to get one), the custom section
        open for custom, the recipe Launch button hidden for custom."""
        custom = recipe == CUSTOM
        key = tuple(v if isinstance(v, str) else "" for v in (recipe, benchmark, device))
        est = self._estimates.get(key) or ("" if custom else
                                           "Press **estimate** for the time on this machine.")
        return (recipe_summary(recipe if isinstance(recipe, str) else ""), est,
                gr.update(open=custom), gr.update(visible=not custom))

    def train_stop(self, run):
        try:
            st = self.jobs.stop(self._job_name(run))
        except (InputError, JobError) as e:
            raise page_error(e)
        return f"Stopping **{st.name}** ({self.jobs.backend.stop_words})."

    def train_resume(self, run, steps, device):
        try:
            name = self._job_name(run)
            blank = steps is None or (isinstance(steps, str) and not steps.strip())
            steps = None if blank else parse_int(steps, "Steps", 1, 10**9)
            device = None if device is None else parse_choice(device, "The device", DEVICES)
            st, notes = self.jobs.resume(name, steps, device)
        except (InputError, JobError) as e:
            raise page_error(e)
        for n in notes:
            gr.Warning(n)
        if st.state == "queued" and st.queue_position:
            return (f"Queued the resume of **{st.name}** (position {st.queue_position}): it "
                    "starts when the running run ends.")
        return f"Resumed **{st.name}** ({st.where}): `{st.command}`"

    def _job_name(self, run) -> str:
        """A run launched by this app (by any client, listed or not on its page), or InputError."""
        if run is None or (isinstance(run, str) and not run.strip()):
            raise InputError("Pick a run in the list first.")
        run = clean_text(run, "The run name", 100)
        if run not in self.jobs.names():
            raise InputError(f"{shown(run)} was not launched from this app: only app runs can be "
                             "stopped or resumed here (use `python -m cmrl train --resume`).")
        return run

    def run_choices(self) -> list[str]:
        names = self.jobs.names()
        others = []
        for c in find_checkpoints(self.roots):
            p = resolve_path(c)
            if not inside(p, self.jobs.runs_dir) and (p / "metrics.jsonl").is_file():
                others.append(c)
        return names + others

    def _run_dir(self, run) -> Path | None:
        if not run or not isinstance(run, str):
            return None
        if run in self.jobs.names():
            path = self.jobs.run_dir(run)
            return path if self.access.readable(path) else None  # a file linked out: not read
        if run in self.run_choices():
            return resolve_path(run)
        return None

    def jobs_table(self) -> list[list]:
        rows = []
        for j in self.jobs.list():
            eta = format_seconds(j.eta_s) if j.alive and j.eta_s is not None else ""
            rows.append([j.name, j.state, j.what, j.benchmark, j.phase or "", j.progress, eta,
                         j.device, time.strftime("%Y-%m-%d %H:%M", time.localtime(j.started))
                         if j.started else "", j.where])
        return rows

    def train_refresh(self, run, shown, known):
        """Timer tick: the job list and run choices (only when they changed, so an open dropdown
        is not disturbed), the selected run's curves (only when its metrics.jsonl changed), its
        status and log, and the checkpoint lists of the other tabs when a checkpoint appeared."""
        known = dict(known or {})
        try:
            self.jobs.pump()  # a queued run whose turn came while no watcher was there
        except JobError:
            pass
        choices = self.run_choices()
        run_update = gr.skip()
        if choices != known.get("runs"):
            run_update = gr.update(choices=choices, value=run if run in choices else None)
            known["runs"] = choices
        table = self.jobs_table()
        table_update = gr.skip()
        if table != known.get("table"):
            table_update = table
            known["table"] = table
        path = self._run_dir(run)
        curves, status, logs = gr.skip(), "", ""
        panel = progress_html(None)
        stamp = None
        if path is not None:
            try:
                st = (path / "metrics.jsonl").stat()
                stamp = f"{path}:{st.st_mtime_ns}:{st.st_size}"
            except OSError:
                stamp = f"{path}:none"
            if stamp != shown:
                rows = read_metrics(path, max_rows=5000)
                x = "grad_steps" if rows and all(r.get("env_steps", 0) == 0 for r in rows) else "step"
                curves = training_figure(rows, f"{run}: {len(rows)} metric rows", x)
            if run in self.jobs.names():
                j = self.jobs.status(run)
                panel = progress_html(j)
                steps = j.progress if j.state in ("queued", "cancelled") else f"{j.progress} steps"
                status = (f"**{j.name}**: {j.state} · {steps} · device {j.device} · "
                          f"`{j.command}`" + (f"\n\n```\n{j.message}\n```" if j.message else ""))
            else:
                status = f"**{run}**: not launched from this app (curves only)."
            logs = self.jobs.log(run, 25) if run in self.jobs.names() else log_tail(path, 25)
        elif shown is not None:
            curves = message_figure("pick a run to see its curves", 420)
        found = self.checkpoints()
        ck_update = gr.skip()
        if "ckpts" in known and found != known["ckpts"]:
            ck_update = gr.update(choices=found)
        known["ckpts"] = found
        return (table_update, run_update, curves, status, logs, ck_update, ck_update, ck_update,
                panel, stamp if path is not None else None, known)

    def _train_tab(self):
        hosted = ""
        if self.hosted:
            hosted = ("\n\n> **Hosted demo page: training is switched off here** (CMRL_HOSTED=1). "
                      "Run the app locally to train.")
        else:
            hosted = (f"\n\n> Each run is capped at {self.jobs.max_steps:,} steps per training "
                      f"phase and {self.jobs.max_seconds / 3600:g} h of wall time on this page.")
        where = (f"as a job on the Ray cluster at `{self.jobs.ray_address}` (it queues the jobs "
                 "and places a cuda run on a GPU node; `auto` asks for no GPU)"
                 if self.jobs.ray_address else "as a separate process")
        queue = ("" if self.jobs.ray_address else
                 " One run at a time: further launches wait in a queue.")
        gr.Markdown(f"Pick a **recipe** (from `cmrl.experiments.recipes`: data made on demand, then offline "
                    f"and/or online training) and launch it {where} (it keeps running if you "
                    f"reload the page); runs go to `{display_path(self.jobs.runs_dir)}/<name>`."
                    f"{queue}  \n**Device here:** {device_summary()}{hosted}")
        with gr.Row():
            recipe = RadioInput(recipe_choices(), value="quick", label="recipe", scale=3)
            estimate = gr.Button("estimate", scale=0, min_width=90)
        about = gr.Markdown(recipe_summary("quick"), elem_classes="small-md")
        est = gr.Markdown("Press **estimate** for the time on this machine.",
                          elem_classes="small-md", elem_id="train-estimate")
        with gr.Row():
            bench = DropdownInput(["ml4", "ml10", "ml45", "ml1:window-close-v3"], value="ml4",
                                  allow_custom_value=True, label="benchmark (or ml1:<env>)")
            seed = NumberInput(0, precision=0, label="seed")
            device = RadioInput(list(DEVICES), value="auto", label="device")
            name = gr.Textbox("", label="run name (optional)")
        with gr.Accordion("custom run: python -m cmrl train with the trainer's flags (recipe "
                          "custom; empty: the trainer's defaults)", open=False) as custom:
            fields = {}
            for row in (CUSTOM_FIELDS[:4], CUSTOM_FIELDS[4:]):
                with gr.Row():
                    fields.update({name: field_input(name) for name in row})
            agent, steps, prior, offline, horizon, envs, warmup, upd, eval_every, ckpt_every = (
                fields[name] for name in CUSTOM_FIELDS)
            launch_custom = gr.Button("Launch custom run", variant="primary",
                                      interactive=not self.hosted)
        with gr.Row():
            launch = gr.Button("Launch", variant="primary", interactive=not self.hosted)
            # Custom values: a run launched after this page was built (or by another client)
            # can be stopped and resumed by name; the handlers check the name.
            run = DropdownInput(self.run_choices(), value=None, label="run", scale=3,
                                allow_custom_value=True)
            stop = gr.Button("Stop", variant="stop")
            cancel = gr.Button("Cancel (queued: leave the queue)")
            resume = gr.Button("Resume (custom: steps = new total)", interactive=not self.hosted)
        status = gr.Markdown()
        progress = gr.HTML(progress_html(None), elem_id="train-progress-panel")
        table = gr.Dataframe(headers=["run", "state", "recipe / agent", "benchmark", "phase",
                                      "progress", "ETA", "device", "started", "where"],
                             label="runs launched from the app", value=self.jobs_table(),
                             interactive=False)
        curves = gr.Plot(label="training curves (metrics.jsonl, refreshed every 2 s): success on "
                               "fresh variations per task, losses, alpha", elem_id="train-curves")
        logbox = gr.Textbox(label="log (last lines)", lines=8, max_lines=12, interactive=False)
        shown = gr.State(None)
        for control in (recipe, bench, device):
            control.change(self.train_recipe_changed, [recipe, bench, device],
                           [about, est, custom, launch], api_visibility="private",
                           show_progress="hidden")
        estimate.click(self.train_estimate, [recipe, bench, device], est, api_name="train_estimate",
                       concurrency_limit=1)
        launch.click(self.train_recipe, [recipe, bench, seed, device, name], [status, run],
                     api_name="train_recipe", concurrency_limit=1)
        launch_custom.click(self.train_launch, [agent, bench, steps, seed, prior, offline, device,
                                                name, horizon, envs, warmup, upd, eval_every,
                                                ckpt_every],
                            [status, run], api_name="train_launch", concurrency_limit=1)
        stop.click(self.train_stop, run, status, api_name="train_stop")
        cancel.click(self.train_cancel, run, status, api_name="train_cancel")
        resume.click(self.train_resume, [run, steps, device], status, api_name="train_resume",
                     concurrency_limit=1)
        return {"run": run, "table": table, "curves": curves, "status": status, "log": logbox,
                "shown": shown, "progress": progress}
