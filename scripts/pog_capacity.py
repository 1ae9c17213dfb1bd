"""Can a diagonal product-of-Gaussians encoder locate the point robot's goal? (docs/adaptation.md,
tenth round). Supervised, no RL: contexts of 1-3 paths from the origin (scripted expert with
action noise 0.1 or 0.5 toward a random arc point, or uniform random actions), rewards recomputed
for a random goal on the arc; an MLP per transition gives a diagonal Gaussian over z, multiplied
over the context; a head trained either to output the goal (`goal`) or, as a reward decoder, to
predict the reward at query points spread over the plane (`reward`). Printed: the median angle
between goal and belief, and the fraction within the success radius (11.5 degrees of arc).

    python scripts/pog_capacity.py goal 8000 1e-3
    python scripts/pog_capacity.py reward 4000 1e-3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cmrl.nets.context_encoder import MIN_VAR, product_of_gaussians

H = 20  # the point robot's episode length


def paths(n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """n episodes from the origin: obs, actions, next_obs [n, H, 2]."""
    ang = rng.uniform(0, np.pi, n)
    target = np.stack([np.cos(ang), np.sin(ang)], -1)
    kind = rng.integers(3, size=n)  # 0: expert, noise 0.1; 1: noise 0.5; 2: random
    pos = np.zeros((n, 2))
    obs, act, nxt = [], [], []
    for _ in range(H):
        a = np.clip((target - pos) / 0.1, -1, 1)
        noisy = np.clip(a + np.where(kind == 0, 0.1, 0.5)[:, None] * rng.normal(size=(n, 2)), -1, 1)
        a = np.where((kind == 2)[:, None], rng.uniform(-1, 1, (n, 2)), noisy)
        obs.append(pos)
        act.append(a)
        pos = pos + 0.1 * a
        nxt.append(pos)
    return np.stack(obs, 1), np.stack(act, 1), np.stack(nxt, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("objective", choices=("goal", "reward"))
    p.add_argument("steps", type=int)
    p.add_argument("lr", type=float)
    p.add_argument("--latent", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    pool = paths(4000, rng)
    L = args.latent

    def batch(B: int, k: int):
        theta = rng.uniform(0, np.pi, B)
        goal = np.stack([np.cos(theta), np.sin(theta)], -1)
        idx = rng.integers(len(pool[0]), size=(B, k))
        obs, act, nxt = (x[idx].reshape(B, k * H, 2) for x in pool)
        rew = -np.linalg.norm(nxt - goal[:, None], axis=-1)[..., None]
        ctx = torch.tensor(np.concatenate([obs, act, rew, nxt], -1), dtype=torch.float32)
        return ctx, torch.tensor(goal, dtype=torch.float32), theta

    enc = nn.Sequential(nn.Linear(7, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                        nn.Linear(128, 2 * L))
    reward = args.objective == "reward"
    head = nn.Sequential(nn.Linear(L + (2 if reward else 0), 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 1 if reward else 2))
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=args.lr)

    def posterior(ctx):
        mu, raw = enc(ctx).split(L, -1)
        return product_of_gaussians(mu, F.softplus(raw) + MIN_VAR)

    def believed_angle(z):
        if not reward:
            g = head(z)
            return torch.atan2(g[:, 1], g[:, 0])
        ang = torch.linspace(0, np.pi, 181)
        arc = torch.stack([ang.cos(), ang.sin()], -1)[None].expand(len(z), -1, -1)
        r = head(torch.cat([z[:, None].expand(-1, 181, -1), arc], -1))[..., 0]
        return ang[r.argmax(1)]

    start = time.time()
    for step in range(args.steps + 1):
        ctx, goal, _ = batch(128, int(rng.integers(1, 4)))
        mu, var = posterior(ctx)
        z = mu + var.sqrt() * torch.randn_like(mu)
        if reward:
            q = torch.tensor(rng.uniform(-1.1, 1.1, (128, 32, 2)), dtype=torch.float32)
            target = -(q - goal[:, None]).norm(dim=-1)
            loss = F.mse_loss(head(torch.cat([z[:, None].expand(-1, 32, -1), q], -1))[..., 0], target)
        else:
            loss = F.mse_loss(head(z), goal)
        kl = 0.5 * (var + mu ** 2 - 1 - var.log()).sum(-1).mean()
        opt.zero_grad()
        (loss + 0.001 * kl).backward()
        opt.step()
        if step % max(1, args.steps // 4) == 0:
            out = []
            with torch.no_grad():
                for k in (1, 2, 3):
                    ctx, _, theta = batch(2000, k)
                    err = np.degrees(np.abs(believed_angle(posterior(ctx)[0]).numpy() - theta))
                    out.append(f"{k} path(s): median {np.median(err):4.1f} deg, "
                               f"{np.mean(err < 11.5):.2f} within")
            print(f"step {step} ({time.time() - start:.0f} s) loss {loss.item():.4f} | "
                  + " | ".join(out), flush=True)


if __name__ == "__main__":
    main()
