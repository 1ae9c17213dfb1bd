"""Routing analysis: running means, similarity measures, and per-task routing of a trained agent."""

from __future__ import annotations

import numpy as np
import pytest

from cmrl.agent_kinds import KINDS
from cmrl.experiments.routing_analysis import (NoRoutingError, RoutingMean,
                                               centered_cosine_similarity, cosine_similarity,
                                               flatten_routing, js_divergence, js_similarity,
                                               mean_routing, routing_distributions, similarity,
                                               similarity_matrix, task_routing)


def random_routing(rng, n=3, layers=2):
    mats = [rng.dirichlet(np.ones(n), size=n) for _ in range(layers)]
    return mats + [rng.dirichlet(np.ones(n))]


def test_mean_routing_is_the_elementwise_mean_and_stays_row_stochastic():
    rng = np.random.default_rng(0)
    snaps = [random_routing(rng) for _ in range(7)]
    mean = mean_routing(snaps)
    for i, m in enumerate(mean):
        np.testing.assert_allclose(m, np.mean([s[i] for s in snaps], axis=0))
        np.testing.assert_allclose(np.atleast_2d(m).sum(-1), 1.0)
    acc = RoutingMean()
    for s in snaps:
        acc.add(s)
    assert acc.count == 7
    np.testing.assert_allclose(flatten_routing(acc.mean()), flatten_routing(mean))
    with pytest.raises(ValueError, match="different shapes"):
        acc.add(random_routing(rng, n=4))
    with pytest.raises(ValueError, match="no routing"):
        RoutingMean().mean()
    with pytest.raises(NoRoutingError):
        mean_routing([None])


def test_similarities_identical_disjoint_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = random_routing(rng), random_routing(rng)
    assert cosine_similarity(a, a) == pytest.approx(1.0)
    assert js_similarity(a, a) == pytest.approx(1.0)
    assert cosine_similarity(a, b) == pytest.approx(cosine_similarity(b, a))
    assert js_similarity(a, b) == pytest.approx(js_similarity(b, a))
    assert 0.0 <= js_similarity(a, b) < 1.0
    # Routing through disjoint modules: JS divergence 1 bit per row -> similarity 0; cosine 0.
    eye = [np.eye(2), np.eye(2), np.array([1.0, 0.0])]
    flip = [np.eye(2)[::-1], np.eye(2)[::-1], np.array([0.0, 1.0])]
    assert js_similarity(eye, flip) == pytest.approx(0.0, abs=1e-9)
    assert cosine_similarity(eye, flip) == pytest.approx(0.0, abs=1e-9)
    assert routing_distributions(eye).shape == (5, 2)
    # Centred cosine: same favourites +1, opposite favourites -1, uniform routing 0.
    assert centered_cosine_similarity(eye, eye) == pytest.approx(1.0)
    assert centered_cosine_similarity(eye, flip) == pytest.approx(-1.0)
    uniform = [np.full((2, 2), 0.5), np.full((2, 2), 0.5), np.full(2, 0.5)]
    assert centered_cosine_similarity(eye, uniform) == 0.0
    assert cosine_similarity(uniform, [0.9 * u + 0.1 * e for u, e in zip(uniform, eye)]) > 0.95
    # JS against a closed form: p=(1,0), q=(.5,.5) -> 0.5*KL(p||m)+0.5*KL(q||m), m=(.75,.25).
    want = 0.5 * np.log2(1 / 0.75) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert js_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(want)
    with pytest.raises(ValueError, match="unknown similarity"):
        similarity(a, b, "euclid")


def test_similarity_matrix():
    rng = np.random.default_rng(2)
    profiles = {f"t{i}": random_routing(rng) for i in range(4)}
    profiles["copy"] = [x.copy() for x in profiles["t0"]]
    for metric in ("cosine", "centered-cosine", "jensen-shannon"):
        names, mat = similarity_matrix(profiles, metric)
        assert names == list(profiles)
        np.testing.assert_allclose(mat, mat.T)
        np.testing.assert_allclose(np.diag(mat), 1.0)
        assert mat[0, 4] == pytest.approx(1.0)
        lo = -1 if metric == "centered-cosine" else 0
        assert ((mat >= lo - 1e-9) & (mat <= 1 + 1e-9)).all()


def test_task_routing_of_a_trained_agent(tmp_path):
    import cmrl
    from tests.test_end_to_end import tiny

    cfg = tiny("cmrl", steps=60)
    cfg.net.num_layers, cfg.net.num_modules = 3, 3
    cfg.train.eval_every, cfg.train.checkpoint_every = 0, 60
    cmrl.train(cfg, tmp_path / "run", progress=False)
    agent = cmrl.load_agent(tmp_path / "run")
    res = task_routing(agent, "window-close-v3", "close the window", episodes=2, variations=[0, 1],
                       horizon=10)
    assert res.steps == 2 * 2 * 10 and res.episodes == 4 and len(res.episode_success) == 4
    assert len(res.mean) == 3 and res.mean[0].shape == (3, 3) and res.mean[-1].shape == (3,)
    for m in res.mean:
        np.testing.assert_allclose(np.atleast_2d(m).sum(-1), 1.0, atol=1e-5)
    other = task_routing(agent, "drawer-open-v3", None, episodes=1, horizon=10)
    assert 0.0 < cosine_similarity(res.mean, other.mean) <= 1.0 + 1e-9
    pearl = cmrl.load_agent(tmp_path / "run")
    pearl.kind, pearl.agent.spec = "pearl", KINDS["pearl"]  # an agent without routing
    with pytest.raises(NoRoutingError, match="plain MLP"):
        task_routing(pearl, "window-close-v3")


def test_nearest_tasks_by_z_and_routing():
    from cmrl.experiments.routing_analysis import TaskContext, nearest_tasks

    rng = np.random.default_rng(3)
    routing = {t: random_routing(rng) for t in ("a", "b", "new")}
    routing["new"] = [x.copy() for x in routing["b"]]  # routes exactly like b
    z = {"a": np.array([0.0, 0.0]), "b": np.array([5.0, 0.0]), "new": np.array([0.5, 0.0])}
    ctx = {t: TaskContext(t, None, z[t] + 0.1, z[t], routing[t], routing[t], routing[t], 0.0, 1.0)
           for t in ("a", "b", "new")}
    out = nearest_tasks(ctx, ["a", "b"])
    assert out["new"]["z_adapted"]["nearest"] == "a"            # z near a ...
    assert out["new"]["routing_adapted"]["nearest"] == "b"      # ... routing like b
    assert out["new"]["routing_adapted"]["similarity"]["b"] == pytest.approx(1.0)
    # a reference task is compared with the others after adaptation, with itself from text alone
    assert set(out["a"]["z_adapted"]["distance"]) == {"b"}
    assert out["a"]["z_text"]["nearest"] == "a"


def test_context_map_of_a_trained_agent(tmp_path):
    import cmrl
    from cmrl.experiments.routing_analysis import context_map
    from tests.test_end_to_end import tiny

    cfg = tiny("cmrl", steps=40)
    cfg.train.eval_every, cfg.train.checkpoint_every = 0, 40
    cmrl.train(cfg, tmp_path / "run", progress=False)
    agent = cmrl.load_agent(tmp_path / "run")
    out = context_map(agent, episodes=1, variations=[0], horizon=8)
    tasks = agent.info["train_tasks"] + agent.info["test_tasks"]
    assert set(out["nearest"]) == set(tasks) and out["meta_train"] == agent.info["train_tasks"]
    held = out["nearest"]["window-close-v3"]
    for key in ("z_text", "z_adapted", "routing_text", "routing_adapted"):
        assert held[key]["nearest"] in agent.info["train_tasks"]
    assert len(out["z"]["window-close-v3"]["text"]) == cfg.net.latent_dim
