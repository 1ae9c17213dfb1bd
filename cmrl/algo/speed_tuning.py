"""The speed choices that stay, and the evidence each rests on (history: docs/speed_history.md).

A second way of running the same maths is kept only where the fair bench showed it >= 1.2x on the
hardware it is for:

- `graphed` (CUDA): the whole SAC update captured once as a CUDA graph and replayed
  (`cuda_graphs.py`): 4.8-11.5x eager's updates/s on an H100, and its whole runs learned like
  eager's. Its Adam is fused and keeps its step counts on the device (`capturable`), as measured.
- bf16 autocast (`sac.precision`): 1.3-2.3x the fp32 update on CPUs with AMX; slower elsewhere
  (12-35x on CPUs with neither AMX nor AVX-512 bf16), so `auto` picks it on AMX CPUs only.
- acting on one torch thread (`one_thread`: the collector's rounds, evaluation units): a forward
  pass over a dozen rows per env step gains nothing from a second intra-op thread and loses much
  when the cores are busy (the bench's collection on the 2-core Xeon, load ~3: 0.76x the bare
  loop with one thread, 0.13x with two).

Retired (docs/speed_history.md): the CPU `fast` path (fused Adam and clip, copy-free soft-modular
kernels, task-level routing once per task, a glibc allocator setting; 1.10x eager in the fair
bench) and `compiled` (torch.compile: slower than `fast` on CPU; 1.25-1.66x eager on an H100 but
below `graphed`, and its one whole H100 run learned worse). Configs and checkpoints that name them
still load: `config.RETIRED_UPDATE_IMPLS` maps them to the surviving path.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings

import torch

from ..config import UPDATE_IMPLS


def resolve_update_impl(name: str, device: torch.device) -> str:
    """`auto` -> `graphed` on CUDA, `eager` elsewhere; the others as they are. (Configs naming a
    retired path load as its survivor: `config.RETIRED_UPDATE_IMPLS`.)"""
    if name not in UPDATE_IMPLS:
        raise ValueError(f"update_impl must be one of {', '.join(UPDATE_IMPLS)}, not {name!r}")
    if name == "auto":
        return "graphed" if device.type == "cuda" else "eager"
    return name


def adam_options(impl: str, capture: bool) -> dict:
    """Adam's implementation flags for an update path: torch's default for `eager`; fused, with
    the step counts on the device when captured, for `graphed`."""
    if impl != "graphed":
        return {}
    return {"fused": True, "capturable": True} if capture else {"fused": True}


def set_adam_options(opt: torch.optim.Optimizer, impl: str, capture: bool) -> None:
    """After `load_state_dict` (which restores the saved flags too): the flags of `impl`, with the
    step counters where that implementation keeps them."""
    flags = adam_options(impl, capture)
    for group in opt.param_groups:
        group["fused"] = flags.get("fused")
        group["foreach"] = False if flags.get("fused") else None
        group["capturable"] = flags.get("capturable", False)
        if flags.get("fused"):
            for p in group["params"]:
                st = opt.state.get(p)
                if st and "step" in st:
                    st["step"] = st["step"].to(device=p.device, dtype=torch.float32)


def has_amx_bf16() -> bool:
    """Whether this CPU has AMX bf16 tiles (Linux /proc/cpuinfo; False where it cannot tell)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def bf16_matmul_cost(device: torch.device, size: tuple[int, int, int] = (768, 256, 256),
                     seconds: float = 0.05) -> float:
    """Time of a bf16 batched matmul over the same fp32 one, measured here (a few ms each): >1 means
    bf16 is slower. The shape is one hidden layer of the default update."""
    M, K, N = size
    a, b = torch.randn(1, M, K, device=device), torch.randn(1, K, N, device=device)

    def per_call(x, y):
        torch.bmm(x, y)
        n, start = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - start < seconds:
            torch.bmm(x, y)
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / n

    return per_call(a.bfloat16(), b.bfloat16()) / per_call(a, b)


def bf16_pays(device: torch.device) -> bool:
    """Where bf16 autocast measured faster than fp32 for the cmrl update: CPUs with AMX."""
    return device.type == "cpu" and has_amx_bf16()


def resolve_precision(name: str, device: torch.device) -> str:
    """`fp32`, `bf16` or `auto` -> `fp32` or `bf16`. Asked for bf16 on a CPU, a quick probe times a
    bf16 matmul against fp32 here and warns with that cost when bf16 is the slower (CPUs without
    AMX or AVX-512 bf16 instructions); it then runs as asked."""
    if name == "auto":
        return "bf16" if bf16_pays(device) else "fp32"
    if name == "bf16":
        if device.type == "cpu":
            cost = bf16_matmul_cost(device)
            if cost > 1.0:
                warnings.warn(f"--precision bf16 on this CPU: a bf16 matmul measured {cost:.1f}x "
                              "the time of the fp32 one here (no AMX or AVX-512 bf16; whole updates "
                              "measured 12-35x slower on such a CPU); fp32 or `auto` is faster",
                              RuntimeWarning, stacklevel=3)
        elif device.type == "cuda" and not torch.cuda.is_bf16_supported():
            warnings.warn("--precision bf16 on a GPU without native bf16: expect it slower than "
                          "fp32", RuntimeWarning, stacklevel=3)
    return name


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` within the block (process-wide), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread(fn):
    """Run `fn` (a method that acts: small forward passes between env steps) on one torch thread."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with torch_threads(1):
            return fn(*args, **kwargs)
    return wrapped
