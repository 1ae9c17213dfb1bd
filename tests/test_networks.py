"""Numerics and wiring of the networks: product of Gaussians, KL, soft-modular routing, SAC gradient
flow (encoder trained by the critic and KL only), batched task beliefs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from cmrl.algo.agent import MetaAgent, TaskBelief
from cmrl.agent_kinds import KINDS
from cmrl.config import NetworkConfig
from cmrl.nets.context_encoder import kl_to_standard_normal, product_of_gaussians
from cmrl.nets.modular_net import SoftModularNet
from cmrl.algo.sac import SACLearner
from conftest import ACT_DIM, ML4_TRAIN, OBS_DIM, tiny_config

TEXT_DIM = 384
TRANSITION_DIM = 2 * OBS_DIM + ACT_DIM + 1


def _goals(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.randn(n, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    return g / g.norm(dim=-1, keepdim=True)


def _agent(kind: str, seed: int = 0, **kw) -> MetaAgent:
    torch.manual_seed(seed)
    cfg = tiny_config(kind, **kw)
    return MetaAgent(cfg, OBS_DIM, ACT_DIM, TEXT_DIM if KINDS[kind].uses_text else 0, ML4_TRAIN)


def _batch(T: int, B: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"obs": torch.randn(T, B, OBS_DIM, generator=g),
            "actions": torch.rand(T, B, ACT_DIM, generator=g) * 2 - 1,
            "rewards": torch.rand(T, B, generator=g),
            "next_obs": torch.randn(T, B, OBS_DIM, generator=g),
            "dones": torch.zeros(T, B)}


def _context(T: int, N: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(T, N, TRANSITION_DIM, generator=torch.Generator().manual_seed(seed))


# -- product of Gaussians / KL ---------------------------------------------------------------------
def test_product_of_gaussians_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    T, N, L = 3, 6, 5
    mu = torch.randn(T, N, L, generator=g, dtype=torch.float64) * 2
    var = torch.rand(T, N, L, generator=g, dtype=torch.float64) * 3 + 0.05
    post_mu, post_var = product_of_gaussians(mu, var)
    assert post_mu.shape == (T, L) and post_var.shape == (T, L)
    exp_var = 1.0 / (1.0 / var).sum(1)
    exp_mu = exp_var * (mu / var).sum(1)
    torch.testing.assert_close(post_var, exp_var, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(post_mu, exp_mu, rtol=1e-10, atol=1e-12)
    # A product of Gaussians is sharper than each of its factors.
    assert (post_var <= var.min(1).values + 1e-12).all()


def test_product_of_gaussians_with_mask_keeps_only_unmasked_factors():
    g = torch.Generator().manual_seed(1)
    T, N, L = 4, 5, 3
    mu = torch.randn(T, N, L, generator=g, dtype=torch.float64)
    var = torch.rand(T, N, L, generator=g, dtype=torch.float64) + 0.1
    mask = torch.tensor([[1, 0, 1, 1, 0],
                         [0, 0, 0, 0, 1],
                         [1, 1, 1, 1, 1],
                         [0, 0, 0, 0, 0]], dtype=torch.float64)
    post_mu, post_var = product_of_gaussians(mu, var, mask)
    for t in range(T):
        keep = mask[t].bool()
        if keep.any():
            v = 1.0 / (1.0 / var[t, keep]).sum(0)
            m = v * (mu[t, keep] / var[t, keep]).sum(0)
            torch.testing.assert_close(post_var[t], v, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(post_mu[t], m, rtol=1e-10, atol=1e-12)
            # equals the unmasked product over the kept factors only
            sub_mu, sub_var = product_of_gaussians(mu[t, keep][None], var[t, keep][None])
            torch.testing.assert_close(post_mu[t], sub_mu[0])
            torch.testing.assert_close(post_var[t], sub_var[0])
        else:  # fully masked: the prior N(0, I)
            assert torch.equal(post_mu[t], torch.zeros(L, dtype=torch.float64))
            assert torch.equal(post_var[t], torch.ones(L, dtype=torch.float64))


def test_kl_to_standard_normal_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(7, 5, generator=g, dtype=torch.float64) * 1.5
    var = torch.rand(7, 5, generator=g, dtype=torch.float64) * 4 + 1e-3
    expected = kl_divergence(Normal(mu, var.sqrt()), Normal(torch.zeros_like(mu), torch.ones_like(var))).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mu, var), expected, rtol=1e-10, atol=1e-12)
    # and it is zero exactly at the prior
    z = torch.zeros(2, 5, dtype=torch.float64)
    torch.testing.assert_close(kl_to_standard_normal(z, torch.ones_like(z)), torch.zeros(2, dtype=torch.float64))


# -- soft-modular network --------------------------------------------------------------------------
def _net(num_layers: int, num_modules: int, ensemble: int, seed: int = 0) -> SoftModularNet:
    torch.manual_seed(seed)
    cfg = NetworkConfig(num_layers=num_layers, num_modules=num_modules, module_width=16,
                        embed_dim=16, gating_hidden=16, gating_layers=2)
    return SoftModularNet(in_dim=10, cond_dim=6, out_dim=3, cfg=cfg, ensemble=ensemble,
                          last_init=None)


@pytest.mark.parametrize("num_layers,num_modules", [(2, 2), (3, 4), (4, 3)])
@pytest.mark.parametrize("ensemble", [1, 2])
def test_soft_modular_routing_is_row_stochastic_and_shaped(num_layers, num_modules, ensemble):
    net = _net(num_layers, num_modules, ensemble)
    B = 9
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, B, 10, generator=g)
    cond = torch.randn(1, B, 6, generator=g)
    out, routing = net(x, cond)
    assert out.shape == (ensemble, B, 3)
    assert len(routing.layers) == num_layers - 1
    for p in routing.layers:
        assert p.shape == (ensemble, B, num_modules, num_modules)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(ensemble, B, num_modules))
    assert routing.final.shape == (ensemble, B, num_modules)
    assert (routing.final >= 0).all()
    torch.testing.assert_close(routing.final.sum(-1), torch.ones(ensemble, B))


def test_soft_modular_routing_depends_on_condition():
    net = _net(3, 4, 1)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 5, 10, generator=g)
    c1, c2 = torch.randn(1, 5, 6, generator=g), torch.randn(1, 5, 6, generator=g)
    out1, r1 = net(x, c1)
    out2, r2 = net(x, c2)
    for p1, p2 in zip(r1.layers, r2.layers):
        assert (p1 - p2).abs().max() > 1e-4
    assert (r1.final - r2.final).abs().max() > 1e-4
    assert (out1 - out2).abs().max() > 1e-6
    # and the same condition gives the same routing (it is a function of (x, c))
    _, r1b = net(x, c1)
    for p, q in zip(r1.layers, r1b.layers):
        torch.testing.assert_close(p, q)


def test_ensemble_members_are_independent():
    """An E=2 ensemble: member e's output only depends on member e's weights."""
    net = _net(3, 2, 2)
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(1, 4, 10, generator=g), torch.randn(1, 4, 6, generator=g)
    out, _ = net(x, c)
    with torch.no_grad():
        net.module_weights[1][2:].add_(1.0)  # member 1's modules of layer 1 ([E * n] = [2 * 2])
    out2, _ = net(x, c)
    torch.testing.assert_close(out2[0], out[0])
    assert (out2[1] - out[1]).abs().max() > 1e-6


@pytest.mark.parametrize("num_layers,num_modules,ensemble", [(2, 2, 1), (3, 4, 2), (4, 3, 1)])
def test_soft_modular_forward_matches_naive_reference(num_layers, num_modules, ensemble):
    """The batched forward pass equals a module-by-module loop over the routing it returns."""
    net = _net(num_layers, num_modules, ensemble)
    B, n = 6, num_modules
    g = torch.Generator().manual_seed(6)
    x, cond = torch.randn(1, B, 10, generator=g), torch.randn(1, B, 6, generator=g)
    with torch.no_grad():
        out, routing = net(x, cond)
        emb = net.obs_out(torch.relu(net.obs_in(x)))  # [E, B, D]
        for e in range(ensemble):
            mods = [torch.relu(emb[e]) @ net.module_weights[0][e * n + i] + net.module_biases[0][e * n + i]
                    for i in range(n)]
            for l in range(1, num_layers):
                p = routing.layers[l - 1][e]  # [B, n, n]
                new = []
                for j in range(n):
                    mixed = sum(p[:, j, i:i + 1] * mods[i] for i in range(n))
                    new.append(torch.relu(mixed) @ net.module_weights[l][e * n + j]
                               + net.module_biases[l][e * n + j])
                mods = new
            final = sum(routing.final[e][:, i:i + 1] * mods[i] for i in range(n))
            ref = torch.relu(final) @ net.head.weight[e] + net.head.bias[e]
            torch.testing.assert_close(out[e], ref, rtol=1e-5, atol=1e-5)


# -- SAC gradient flow -----------------------------------------------------------------------------
def _encoder_grads(agent):
    return [p.grad for p in agent.encoder.parameters()]


def test_actor_loss_does_not_reach_encoder_but_critic_loss_does():
    agent = _agent("cmrl")
    T, B = 3, 8
    batch = _batch(T, B)
    obs = batch["obs"].reshape(T * B, OBS_DIM)
    acts = batch["actions"].reshape(T * B, ACT_DIM)
    mu, var = agent.infer_posterior(_context(T, 5), _goals(T))
    z = agent.sample_z(mu, var)
    cond = z.repeat_interleave(B, dim=0)

    # actor loss, computed the way sac.py does (z detached)
    pi = agent.actor(obs, cond.detach())
    q_pi = agent.critic(obs, pi.action, cond.detach()).min(0).values
    (pi.log_prob - q_pi).mean().backward()
    assert all(gr is None or not gr.abs().any() for gr in _encoder_grads(agent))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())

    # critic loss with z attached trains the encoder
    agent.zero_grad(set_to_none=True)
    q = agent.critic(obs, acts, cond)
    (q - batch["rewards"].reshape(1, -1)).pow(2).mean().backward()
    grads = _encoder_grads(agent)
    assert all(gr is not None for gr in grads)
    assert sum(gr.abs().sum() for gr in grads) > 0
    # the goal text reaches the encoder through its own factor and the projection
    assert agent.encoder.goal_net[0].weight.grad.abs().sum() > 0
    assert agent.encoder.goal_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["cmrl", "pearl"])
def test_sac_update_encoder_gets_critic_grads_only(kind):
    """Spy on SACLearner.update: the encoder's gradient at the critic step is nonzero even without the
    KL term (so it comes from the Bellman loss), and the actor's backward pass adds nothing to it (nor
    to the critics')."""
    agent = _agent(kind, kl_weight=0.0)
    learner = SACLearner(agent)
    seen = {}

    def spy(opt, name):
        step = opt.step

        def wrapped(*a, **k):
            seen[name] = {"enc": [None if p.grad is None else p.grad.clone() for p in agent.encoder.parameters()],
                          "critic": [None if p.grad is None else p.grad.clone() for p in agent.critic.parameters()],
                          "actor": [None if p.grad is None else p.grad.clone() for p in agent.actor.parameters()]}
            return step(*a, **k)
        opt.step = wrapped

    spy(learner.critic_opt, "critic_step")
    spy(learner.actor_opt, "actor_step")
    T = 3
    goal = _goals(T) if kind == "cmrl" else None
    learner.update(_batch(T, 16), _context(T, 8), goal, torch.arange(T))
    crit, act = seen["critic_step"], seen["actor_step"]
    assert all(g is not None for g in crit["enc"]) and sum(g.abs().sum() for g in crit["enc"]) > 0
    assert all(g is None for g in crit["actor"])  # the critic loss does not train the actor
    for before, after in zip(crit["enc"], act["enc"]):
        assert torch.equal(before, after), "the actor loss reached the context encoder"
    for before, after in zip(crit["critic"], act["critic"]):
        assert torch.equal(before, after), "the actor loss reached the critics"
    assert sum(g.abs().sum() for g in act["actor"]) > 0
    # the critics are trainable again after the actor step
    assert all(p.requires_grad for p in agent.critic.parameters())


def _params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module) -> bool:
    return any(not torch.equal(a, b.detach()) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("kind", ["cmrl", "pearl", "sm", "care"])
def test_sac_update_runs_and_changes_weights(kind):
    agent = _agent(kind)
    learner = SACLearner(agent)
    T, B = 3, 32
    enc0 = _params(agent.encoder) if agent.encoder is not None else None
    actor0, critic0 = _params(agent.actor), _params(agent.critic)
    target0, alpha0 = _params(agent.critic_target), agent.log_alpha.detach().clone()
    context = _context(T, 16) if agent.uses_context else None
    goal = _goals(T) if agent.uses_text else None
    for i in range(2):
        metrics = learner.update(_batch(T, B, seed=i), context, goal, torch.arange(T))
        assert metrics and all(np.isfinite(v) for v in metrics.values()), metrics
    for key in ("critic_loss", "actor_loss", "q_mean", "alpha", "entropy"):
        assert key in metrics
    if agent.uses_context:
        assert "kl" in metrics and metrics["kl"] >= 0
        assert _changed(enc0, agent.encoder)
    assert _changed(actor0, agent.actor)
    assert _changed(critic0, agent.critic)
    assert _changed(target0, agent.critic_target)
    # per-task temperatures all moved
    assert (agent.log_alpha.detach() != alpha0).all()
    assert learner.updates == 2
    # polyak: the target moved only a little towards the critic
    for t0, t1, c1 in zip(target0, agent.critic_target.parameters(), agent.critic.parameters()):
        assert (t1 - t0).abs().max() <= (c1.detach() - t0).abs().max() + 1e-6


def test_sac_update_subset_of_tasks_and_shared_alpha():
    """A batch over a subset of the train tasks only moves those tasks' temperatures."""
    agent = _agent("cmrl")
    learner = SACLearner(agent)
    alpha0 = agent.log_alpha.detach().clone()
    ids = torch.tensor([2, 0])
    m = learner.update(_batch(2, 16), _context(2, 8), _goals(2), ids)
    assert all(np.isfinite(v) for v in m.values())
    a = agent.log_alpha.detach()
    assert a[0] != alpha0[0] and a[2] != alpha0[2] and a[1] == alpha0[1]

    shared = _agent("pearl", per_task_alpha=False)
    assert shared.log_alpha.numel() == 1
    m = SACLearner(shared).update(_batch(3, 16), _context(3, 8), None, torch.arange(3))
    assert all(np.isfinite(v) for v in m.values())


def test_sac_update_bf16_runs():
    agent = _agent("cmrl", precision="bf16")
    m = SACLearner(agent).update(_batch(3, 16), _context(3, 8), _goals(3), torch.arange(3))
    assert all(np.isfinite(v) for v in m.values()), m


# -- batched beliefs -------------------------------------------------------------------------------
def _transition(E: int, seed: int):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(E, OBS_DIM)).astype(np.float32),
            rng.uniform(-1, 1, size=(E, ACT_DIM)).astype(np.float32),
            rng.uniform(size=E).astype(np.float32),
            rng.normal(size=(E, OBS_DIM)).astype(np.float32))


def test_task_belief_shapes_and_act():
    agent = _agent("cmrl")
    E, L = 3, agent.cond_dim
    belief = TaskBelief(agent, E, goal=_goals(E).numpy())
    assert belief.z.shape == (E, L)
    belief.observe(*_transition(E, 0))
    mu, var = belief.infer_posterior()
    assert mu.shape == (E, L) and var.shape == (E, L) and (var > 0).all()
    out = belief.act(_transition(E, 1)[0])
    assert out.action.shape == (E, ACT_DIM) and out.mean_action.shape == (E, ACT_DIM)
    assert (out.action.abs() <= 1).all()
    assert len(out.routing.layers) == agent.config.net.num_layers - 1
    assert out.routing.layers[0].shape == (E, agent.config.net.num_modules, agent.config.net.num_modules)
    assert out.routing.final.shape == (E, agent.config.net.num_modules)
    det1 = belief.act(_transition(E, 1)[0], deterministic=True).action
    det2 = belief.act(_transition(E, 1)[0], deterministic=True).action
    assert torch.equal(det1, det2)
    m, s = belief.posterior_numpy()
    assert m.shape == (E, L) and s.shape == (E, L)


@pytest.mark.parametrize("kind", ["cmrl", "pearl"])
def test_task_belief_running_posterior_matches_encoder(kind):
    """The incremental running sums equal the encoder's product over the whole context (with the goal
    factor for cmrl), and a masked observe skips those envs."""
    agent = _agent(kind)
    E = 3
    goal = _goals(E)
    belief = TaskBelief(agent, E, goal=goal.numpy() if kind == "cmrl" else None)
    rows = [[] for _ in range(E)]
    masks = [None, np.array([True, False, True]), None, np.array([False, False, True])]
    for k, m in enumerate(masks):
        o, a, r, o2 = _transition(E, 10 + k)
        belief.observe(o, a, r, o2, env_mask=m)
        c = np.concatenate([o, a, r[:, None], o2], -1)
        for e in range(E):
            if m is None or m[e]:
                rows[e].append(c[e])
    assert list(belief.num_transitions) == [len(r) for r in rows] == [3, 2, 4]
    mu, var = belief.infer_posterior()
    g = goal if kind == "cmrl" else None
    with torch.no_grad():
        for e in range(E):
            ctx = torch.as_tensor(np.stack(rows[e]))[None]
            emu, evar = agent.infer_posterior(ctx, None if g is None else g[e:e + 1])
            torch.testing.assert_close(mu[e], emu[0], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(var[e], evar[0], rtol=1e-4, atol=1e-6)


def test_clear_z_with_mask_resets_only_masked_envs():
    agent = _agent("cmrl")
    E = 3
    goal = _goals(E).numpy()
    belief = TaskBelief(agent, E, goal=goal)
    prior_mu, prior_var = (t.clone() for t in belief.infer_posterior())
    for k in range(3):
        belief.observe(*_transition(E, k))
    mu1, var1 = (t.clone() for t in belief.infer_posterior())
    z1 = belief.z.clone()
    assert not torch.allclose(mu1, prior_mu)
    mask = np.array([True, False, True])
    belief.clear_z(mask)
    mu2, var2 = belief.infer_posterior()
    assert list(belief.num_transitions) == [0, 3, 0]
    torch.testing.assert_close(mu2[mask], prior_mu[mask])
    torch.testing.assert_close(var2[mask], prior_var[mask])
    assert torch.equal(mu2[1], mu1[1]) and torch.equal(var2[1], var1[1])
    assert not torch.equal(belief.z[0], z1[0])  # masked envs draw a new z from the prior
    belief.clear_z()
    assert list(belief.num_transitions) == [0, 0, 0]
    torch.testing.assert_close(belief.infer_posterior()[0], prior_mu)


def test_clear_z_with_mask_keeps_z_of_unmasked_envs():
    agent = _agent("cmrl")
    E = 3
    belief = TaskBelief(agent, E, goal=_goals(E).numpy())
    belief.observe(*_transition(E, 0))
    belief.sample_z(deterministic=True)  # e.g. after adaptation: act with the posterior mean
    z1 = belief.z.clone()
    belief.clear_z(np.array([True, False, False]))
    assert torch.equal(belief.z[1:], z1[1:])


def test_clear_z_with_mask_pearl():
    agent = _agent("pearl")
    belief = TaskBelief(agent, 2)
    belief.observe(*_transition(2, 0))
    mu1, var1 = (t.clone() for t in belief.infer_posterior())
    belief.clear_z(np.array([False, True]))
    mu, var = belief.infer_posterior()
    assert torch.equal(mu[1], torch.zeros_like(mu[1])) and torch.equal(var[1], torch.ones_like(var[1]))
    assert torch.equal(mu[0], mu1[0]) and torch.equal(var[0], var1[0])
    assert list(belief.num_transitions) == [1, 0]


def test_prior_depends_on_goal_for_cmrl_and_is_standard_normal_for_pearl():
    cm = _agent("cmrl")
    goals = _goals(2).numpy()
    b = TaskBelief(cm, 2, goal=goals)
    mu, var = b.infer_posterior()
    assert (mu[0] - mu[1]).abs().max() > 1e-5 or (var[0] - var[1]).abs().max() > 1e-5
    # the prior is the goal's own factor, also as the encoder sees it with an empty context
    with torch.no_grad():
        gmu, gvar = cm.encoder.goal_factor(torch.as_tensor(goals))
        emu, evar = cm.infer_posterior(torch.zeros(2, 0, TRANSITION_DIM), torch.as_tensor(goals))
    torch.testing.assert_close(mu, gmu)
    torch.testing.assert_close(var, gvar)
    torch.testing.assert_close(emu, gmu)
    torch.testing.assert_close(evar, gvar)

    pe = _agent("pearl")
    b = TaskBelief(pe, 2)
    mu, var = b.infer_posterior()
    assert torch.equal(mu, torch.zeros(2, pe.cond_dim)) and torch.equal(var, torch.ones(2, pe.cond_dim))
    emu, evar = pe.infer_posterior(torch.zeros(2, 0, TRANSITION_DIM))
    assert torch.equal(emu, torch.zeros(2, pe.cond_dim)) and torch.equal(evar, torch.ones(2, pe.cond_dim))


@pytest.mark.parametrize("kind", ["cmrl", "pearl"])
def test_posterior_std_shrinks_as_transitions_arrive(kind):
    agent = _agent(kind)
    E = 2
    belief = TaskBelief(agent, E, goal=_goals(E).numpy() if kind == "cmrl" else None)
    _, var = (t.clone() for t in belief.infer_posterior())
    first = var.clone()
    for k in range(6):
        belief.observe(*_transition(E, 20 + k))
        _, new = belief.infer_posterior()
        assert (new <= var + 1e-7).all()
        var = new.clone()
    assert (var < first).all()


def test_sm_task_condition_one_hot_and_unknown_zero():
    agent = _agent("sm")
    assert agent.encoder is None and agent.cond_dim == len(ML4_TRAIN)
    cond = agent.task_condition(torch.tensor([0, 2, -1, 1]))
    expected = torch.tensor([[1., 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
    assert torch.equal(cond, expected)
    belief = TaskBelief(agent, 2, task_ids=[1, -1])
    assert torch.equal(belief.condition(), torch.tensor([[0., 1, 0], [0, 0, 0]]))
    belief.observe(*_transition(2, 0))  # a no-op for the oracle
    out = belief.act(_transition(2, 1)[0], deterministic=True)
    assert out.action.shape == (2, ACT_DIM)
    with pytest.raises(RuntimeError):
        belief.infer_posterior()
    # the one-hot actually routes: two task ids give different actions on the same obs
    o = np.repeat(_transition(1, 2)[0], 2, axis=0)
    a = TaskBelief(agent, 2, task_ids=[0, 2]).act(o, deterministic=True)
    assert (a.mean_action[0] - a.mean_action[1]).abs().max() > 0
