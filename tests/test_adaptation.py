"""The mechanism must adapt: pearl and cmrl, trained offline on the point robot (goal hidden on
a half circle) for one to three minutes, do better after three adaptation episodes than zero-shot, and the
diagnosis sees their z locate the goal. This test guards against the context silently breaking
(contexts drawn across goal variations, a posterior collapsed to its prior)."""

import json

import numpy as np
import pytest

from cmrl.algo.trained_agent import load_agent
from cmrl.algo.trainer import Trainer
from cmrl.data import load_dataset
from cmrl.experiments.context_diagnosis import diagnose
from cmrl.experiments.point_sanity import POINT_DATA, point_config
from cmrl.experiments.recipes import ensure_dataset

pytestmark = pytest.mark.timeout(900)

# cmrl's seed 0 sits at 0.9 and lands on either side of it with the CPU's float kernels (same
# code and data; docs/adaptation.md, Targets): its floor is what every CPU measured.
EVAL_FLOOR = {"pearl": 0.9, "cmrl": 0.75}


@pytest.fixture(scope="module")
def point_data(tmp_path_factory):
    return ensure_dataset(POINT_DATA, tmp_path_factory.mktemp("point-data"))


def test_point_dataset_records_variation_and_goal(point_data):
    data, manifest = load_dataset(point_data)
    d = data["point-robot"]
    assert manifest["horizon"] == 20 and len(d) == 300 * 20
    assert (d.variations >= 0).all() and d.goals.shape == (300, 2)
    assert np.allclose(np.linalg.norm(d.goals, axis=1), 1.0, atol=1e-5)
    # the goal is not in the observation: the first observation of every episode is the origin
    firsts = d.obs[np.r_[0, np.flatnonzero(d.dones)[:-1] + 1]]
    assert np.allclose(firsts, 0.0)


@pytest.fixture(scope="module", params=["pearl", "cmrl"])
def trained(request, point_data, tmp_path_factory):
    run = tmp_path_factory.mktemp(f"point-{request.param}")
    Trainer(point_config(request.param, point_data), run, progress=False).train()
    agent = load_agent(run)
    res = agent.evaluate(("train",), num_variations=20, adaptation_episodes=3, seed=0)
    (run / "eval.json").write_text(json.dumps(res))
    return agent, res["splits"]["train"]["tasks"]["point-robot"]


def test_adapted_episode_beats_zero_shot(trained):
    agent, r = trained
    assert r["episode_phases"] == ["zero-shot", "adapt", "adapt", "adapt", "eval"]
    zero_ret, zero_succ = r["return_by_episode"][0], r["success_by_episode"][0]
    # the last adaptation episode and the evaluation one, against the zero-shot episode: with the
    # goal unknown the robot goes to the middle of the arc (return about -15, success about 0.1);
    # adapted, it heads for the goal the rewards revealed
    late_ret = np.mean(r["return_by_episode"][-2:])
    late_succ = np.mean(r["success_by_episode"][-2:])
    # (per-seed gains: docs/adaptation.md)
    assert late_ret > zero_ret + 1.0, r["return_by_episode"]
    assert late_succ >= zero_succ + 0.1, r["success_by_episode"]
    # the evaluation episode reaches most goals (measured at seed 0: docs/adaptation.md)
    assert r["success_by_episode"][-1] >= EVAL_FLOOR[agent.kind], r["success_by_episode"]


def test_diagnosis_sees_z_locate_the_goal(trained):
    agent, _ = trained
    rep = diagnose(agent, num_variations=8, seed=1)
    fresh = next(p for p in rep["tasks"] if p["split"] == "train")
    assert set(fresh) >= {"own", "expert", "random", "prior", "goals"}
    # the goal probe (fitted on training variations) places the goal better from the agent's own
    # adaptation episodes than from no context at all
    assert fresh["own"]["probe_error"] < fresh["prior"]["probe_error"]
    assert fresh["own"]["return"] > fresh["prior"]["return"]
