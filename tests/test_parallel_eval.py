"""Evaluation over worker processes (cmrl/algo/parallel_eval.py): the same JSON whatever the number
of workers, because every variation draws from its own generator and every forward pass spans all of
a task's variations whichever of them a unit steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmrl.algo import parallel_eval
from cmrl.algo.agent import MetaAgent
from cmrl.algo.evaluation import chosen_variations, episode_phases, evaluate, run_variations
from cmrl.config import BenchmarkConfig
from cmrl.envs.metaworld_env import TaskPool
from cmrl.envs.tasks import resolve_benchmark
from tests.conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config
from tests.test_evaluation_protocol import _Encoder


@pytest.fixture(scope="module")
def ml1():
    return TaskPool(resolve_benchmark(BenchmarkConfig(name="ml1:reach-v3", horizon=5)))


def _agent(kind: str) -> MetaAgent:
    torch.manual_seed(0)
    return MetaAgent(tiny_config(kind), OBS_DIM, ACT_DIM, 16, ML4_TRAIN).eval()


def _json(res: dict) -> str:
    """The result without what differs from run to run by design (wall time, worker count)."""
    return json.dumps({k: v for k, v in res.items() if k not in ("wall_time_s", "workers")},
                      sort_keys=True)


@pytest.mark.parametrize("kind", ["cmrl", "pearl"])
def test_same_json_with_one_and_several_workers(ml1, kind):
    """ML1: one task per split, so with 3 workers each task's variations split into groups."""
    agent = _agent(kind)
    kw = dict(splits=("train", "test"), encoder=_Encoder(), num_variations=3,
              adaptation_episodes=2, eval_episodes=1, seed=7)
    one = evaluate(agent, ml1, workers=1, **kw)
    three = evaluate(agent, ml1, workers=3, **kw)
    assert one["workers"] == 1 and three["workers"] == 3
    assert _json(three) == _json(one)
    assert one["splits"]["test"]["tasks"]["reach-v3"]["variations"] == 3
    assert parallel_eval._EXECUTOR  # the workers are kept for the next evaluation


def test_a_variation_does_not_depend_on_the_others_stepped_beside_it(ml1):
    agent = _agent("pearl")
    phases = episode_phases(2, 1, True)
    succ, ret = run_variations(agent, ml1, "reach-v3", "test", None, 4, phases, seed=3)
    assert ret.shape == (4, 4) and np.all(ret != 0)
    for rows in ([2], [0, 3]):
        s, r = run_variations(agent, ml1, "reach-v3", "test", None, 4, phases, seed=3, rows=rows)
        np.testing.assert_array_equal(r, ret[rows])
        np.testing.assert_array_equal(s, succ[rows])
    _, other = run_variations(agent, ml1, "reach-v3", "test", None, 4, phases, seed=4, rows=[2])
    assert not np.array_equal(other, ret[[2]])  # another seed: other variations and draws
    # variations given explicitly replace the seeded draw: the same draw gives the same numbers
    drawn = chosen_variations(ml1, "reach-v3", "test", 4, 3)
    _, given = run_variations(agent, ml1, "reach-v3", "test", None, 4, phases, seed=3,
                              variations=drawn)
    np.testing.assert_array_equal(given, ret)
    _, reversed_ = run_variations(agent, ml1, "reach-v3", "test", None, 4, phases, seed=3,
                                  variations=drawn[::-1])
    assert not np.array_equal(reversed_, ret)


def test_units_cover_every_variation_once_and_reach_the_workers():
    sizes = {("train", "a"): 10, ("test", "b"): 3}
    for workers in (1, 2, 5, 16):
        units = parallel_eval.plan_units(sizes, workers)
        assert len(units) >= min(workers, 13)
        for key, n in sizes.items():
            rows = [i for u in units if (u.split, u.task) == key for i in u.rows]
            assert rows == list(range(n))
    assert len(parallel_eval.plan_units({("test", "a"): 10}, 2)) == 2  # ML1's one task splits


def test_bare_loop_steps_the_same_episodes(ml1):
    out = parallel_eval.bare_loop(ml1, ("test",), num_variations=2, episodes=3, seed=0, workers=1)
    assert out["env_steps"] == 2 * 3 * 5 and out["seconds"] > 0 and out["workers"] == 1


def test_bad_worker_counts_are_refused(ml1):
    with pytest.raises(ValueError, match="workers must be >= 1"):
        evaluate(_agent("sm"), ml1, workers=0)


def test_each_split_is_drawn_alone_and_as_metaworld_draws_it(ml1):
    """`TaskPool` draws a split's goal variations only when asked (the evaluator needs the held-out
    split of one seed and the meta-train split of another), and they are Meta-World's own."""
    import metaworld

    from cmrl.envs.metaworld_env import _MetaWorldSplits

    lazy = _MetaWorldSplits(ml1.benchmark, 3)
    assert not lazy._tasks
    ref = metaworld.ML1("reach-v3", seed=3)
    assert [t.data for t in lazy.test_tasks] == [t.data for t in ref.test_tasks]
    assert set(lazy._tasks) == {"test"}
    assert [t.data for t in lazy.train_tasks] == [t.data for t in ref.train_tasks]
    assert dict(lazy.train_classes) == dict(ref.train_classes)


def test_a_script_without_a_main_guard_falls_back_to_one_process(tmp_path):
    """Spawned workers re-run an unguarded script and die at once; the evaluation warns and runs
    in the calling process instead of failing."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from cmrl.algo.agent import MetaAgent\n"
        "from cmrl.algo.evaluation import evaluate\n"
        "from cmrl.config import BenchmarkConfig\n"
        "from cmrl.envs.metaworld_env import TaskPool\n"
        "from cmrl.envs.tasks import resolve_benchmark\n"
        "from tests.conftest import ML4_TRAIN, tiny_config\n"
        "pool = TaskPool(resolve_benchmark(BenchmarkConfig(name='ml1:reach-v3', horizon=3)))\n"
        "agent = MetaAgent(tiny_config('pearl'), 39, 4, 0, ML4_TRAIN)\n"
        "res = evaluate(agent, pool, ('test',), num_variations=2, workers=2)\n"
        "print('evaluated', res['splits']['test']['tasks']['reach-v3']['variations'])\n")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=root, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "evaluated 2" in r.stdout
    assert "guard its entry point" in r.stderr
