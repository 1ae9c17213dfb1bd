"""Per-task replay: one ring buffer per task, stored together as [T, capacity, ...] arrays.

Sampling draws a [T, B] batch for all tasks in one indexing operation, which the SAC update then
consumes in one batched forward pass. The same class serves as PEARL's encoder buffer (recent
transitions for context, cleared each collection iteration) and, in offline mode, as the dataset.
`state_dict` / `load_state_dict` give the filled part as plain arrays (saved with safetensors).
"""

from __future__ import annotations

import numpy as np
import torch

FIELDS = ("obs", "actions", "rewards", "next_obs", "dones", "groups")


class MultiTaskReplay:
    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, act_dim: int):
        self.num_tasks, self.capacity = num_tasks, capacity
        self.obs_dim, self.act_dim = obs_dim, act_dim
        T, C = num_tasks, capacity
        self.obs = np.zeros((T, C, obs_dim), np.float32)
        self.actions = np.zeros((T, C, act_dim), np.float32)
        self.rewards = np.zeros((T, C), np.float32)
        self.next_obs = np.zeros((T, C, obs_dim), np.float32)
        self.dones = np.zeros((T, C), np.float32)  # 1 = true terminal (Meta-World has none)
        # The goal variation each transition was collected on (-1: unknown). A context and the RL
        # rows it conditions must come from one variation: that is PEARL's task.
        self.groups = np.full((T, C), -1, np.int64)
        self.group_goals: list[dict[int, np.ndarray]] = [{} for _ in range(T)]
        self._group_index: list[dict[int, np.ndarray] | None] = [None] * T
        self.size = np.zeros(T, np.int64)
        self.ptr = np.zeros(T, np.int64)
        self.version = np.zeros(T, np.int64)  # bumped by every change, for caches of derived rows

    def add(self, task: int, obs, actions, rewards, next_obs, dones=None, groups=None,
            goal: np.ndarray | None = None) -> None:
        """Append n transitions of one task (arrays with leading dim n). `groups`: their goal
        variation (an int for all, or [n]); `goal`: that variation's goal position, kept for
        relabelling rewards (`variation_batches.py`)."""
        n = len(rewards)
        if n == 0:
            return
        groups = np.broadcast_to(np.asarray(-1 if groups is None else groups, np.int64), (n,))
        if goal is not None and groups.size:
            for g in np.unique(groups):
                self.group_goals[task][int(g)] = np.asarray(goal, np.float32)
        if n > self.capacity:  # keep the newest
            obs, actions, rewards, next_obs = obs[-self.capacity:], actions[-self.capacity:], \
                rewards[-self.capacity:], next_obs[-self.capacity:]
            dones = None if dones is None else dones[-self.capacity:]
            groups = groups[-self.capacity:]
            n = self.capacity
        idx = (self.ptr[task] + np.arange(n)) % self.capacity
        self.obs[task, idx] = obs
        self.actions[task, idx] = actions
        self.rewards[task, idx] = rewards
        self.next_obs[task, idx] = next_obs
        self.dones[task, idx] = 0.0 if dones is None else dones
        self.groups[task, idx] = groups
        self._group_index[task] = None
        self.version[task] += 1
        self.ptr[task] = (self.ptr[task] + n) % self.capacity
        self.size[task] = min(self.size[task] + n, self.capacity)

    def clear(self, task: int | None = None) -> None:
        tasks = range(self.num_tasks) if task is None else [task]
        for t in tasks:
            self.size[t] = 0
            self.ptr[t] = 0
            self._group_index[t] = None
            self.group_goals[t] = {}
            self.version[t] += 1

    def __len__(self) -> int:
        return int(self.size.sum())

    def group_index(self, task: int) -> dict[int, np.ndarray]:
        """{variation: indices of its transitions} of one task (rebuilt after each add)."""
        if self._group_index[task] is None:
            g = self.groups[task, :self.size[task]]
            order = np.argsort(g, kind="stable")
            keys, starts = np.unique(g[order], return_index=True)
            self._group_index[task] = {int(k): part for k, part in
                                       zip(keys, np.split(order, starts[1:]))}
        return self._group_index[task]

    def oldest_first(self, task: int) -> np.ndarray:
        """Storage positions of a task's filled rows in the order they were added."""
        n = int(self.size[task])
        return (self.ptr[task] - n + np.arange(n)) % self.capacity

    def episode_firsts(self, task: int) -> np.ndarray:
        """[size]: for each filled storage position, the position of its episode's first row. An
        episode is a run of rows added in order, of one variation, each starting where the
        previous one ended (once a ring buffer wraps, its oldest run starts where it was cut)."""
        order = self.oldest_first(task)
        obs, nxt, groups = self.obs[task, order], self.next_obs[task, order], self.groups[task, order]
        start = np.ones(len(order), bool)
        start[1:] = (groups[1:] != groups[:-1]) | (obs[1:] != nxt[:-1]).any(-1)
        first = np.maximum.accumulate(np.where(start, np.arange(len(order)), 0))
        out = np.empty(len(order), np.int64)
        out[order] = order[first]
        return out

    def _indices(self, batch: int, rng: np.random.Generator, tasks: np.ndarray) -> np.ndarray:
        sizes = self.size[tasks]
        if (sizes == 0).any():
            empty = [int(t) for t in tasks[sizes == 0]]
            raise RuntimeError(f"replay of task(s) {empty} is empty")
        return (rng.random((len(tasks), batch)) * sizes[:, None]).astype(np.int64)

    def sample(self, batch: int, rng: np.random.Generator, tasks: np.ndarray | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """A batch {field: [T, batch, ...]} drawn uniformly from each task's buffer."""
        tasks = np.arange(self.num_tasks) if tasks is None else np.asarray(tasks)
        idx = self._indices(batch, rng, tasks)
        rows = tasks[:, None]
        out = {name: torch.from_numpy(getattr(self, name)[rows, idx]) for name in FIELDS
               if name != "groups"}
        return {k: v.to(device, non_blocking=True) for k, v in out.items()}

    def sample_context(self, size: int, rng: np.random.Generator, tasks: np.ndarray | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
        """Context transitions [T, size, 2*obs+act+1] as (s, a, r, s') rows, for the encoder."""
        b = self.sample(size, rng, tasks, device)
        return torch.cat([b["obs"], b["actions"], b["rewards"].unsqueeze(-1), b["next_obs"]], dim=-1)

    # -- persistence --------------------------------------------------------------------------------
    def state_dict(self, prefix: str) -> dict[str, np.ndarray]:
        """Filled part of each task's buffer, oldest first, under `prefix`."""
        out: dict[str, np.ndarray] = {}
        for t in range(self.num_tasks):
            order = self.oldest_first(t)
            for name in FIELDS:
                out[f"{prefix}.{t}.{name}"] = np.ascontiguousarray(getattr(self, name)[t, order])
        out.update(self.goals_state(prefix))
        return out

    def load_state_dict(self, state: dict[str, np.ndarray], prefix: str) -> None:
        """Restore `state_dict`'s arrays (checkpoints from before `groups` load with -1)."""
        self.clear()
        for t in range(self.num_tasks):
            parts = [state[f"{prefix}.{t}.{name}"] for name in FIELDS[:-1]]
            groups = state.get(f"{prefix}.{t}.groups")
            self.add(t, *parts, groups=groups)
            for key, goal in state.items():
                head = f"{prefix}.{t}.goal."
                if key.startswith(head):
                    self.group_goals[t][int(key[len(head):])] = np.asarray(goal, np.float32)

    def goals_state(self, prefix: str) -> dict[str, np.ndarray]:
        """The goal position of every variation seen, for `state_dict`'s companions."""
        return {f"{prefix}.{t}.goal.{g}": v for t in range(self.num_tasks)
                for g, v in self.group_goals[t].items()}
