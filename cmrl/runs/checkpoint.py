"""Run directories: safetensors + JSON only, never pickle, written atomically, validated on load.

    RUN/config.json          what the model is: run config, agent kind, dims, text encoder, tasks,
                             counters, versions (written last, so it names a complete model)
    RUN/model.safetensors    the agent's weights
    RUN/metrics.jsonl        training metrics, one JSON object per line (trainer)
    RUN/state/               everything `--resume` needs: weights, optimisers, RNG, replay, counters;
                             written as a new directory and swapped in with renames, so a run killed
                             mid-save still has the previous complete state

Loading never executes code from the files: safetensors holds only tensors, JSON only data, and every
file is checked (format marker, keys, shapes, dtypes) before use. Any problem raises `CheckpointError`
naming the file.

A run directory may come from anyone, so loading is bounded before anything big is allocated:
config.json's size, nesting and numbers are capped (and every config value by `config.check_bounds`),
the networks it describes are built on PyTorch's "meta" device (shapes only, no memory) and their
size checked against a budget (`MAX_MODEL_BYTES`), and the safetensors header is read on its own and
compared tensor by tensor with those shapes before a single weight is read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .goal_probe import GOAL_PROBE_FILE

FORMAT = "cmrl-run-v1"
MODEL_FILE, CONFIG_FILE, STATE_DIR = "model.safetensors", "config.json", "state"

MAX_CONFIG_BYTES = 1 << 20
"""config.json larger than this is refused unread (a real one is a few KB)."""
MAX_JSON_DEPTH = 16
"""Nesting depth allowed in config.json (a real one nests 4 deep)."""
MAX_JSON_INT = 2**63
"""Integers in config.json beyond this (in magnitude) are refused."""
MAX_IO_DIM = 4096
"""Bound on obs_dim, act_dim and the text encoder's dim recorded in config.json."""
MAX_TASKS = 64
"""Bound on the train_tasks / test_tasks lists (ML45 has 45 meta-train tasks)."""
MAX_MODEL_BYTES = 512 << 20
"""Default budget of `load_agent`: the described networks (weights and buffers) may take at most
this much memory. A run directory describing bigger networks is refused before they are built."""
MAX_HEADER_BYTES = 16 << 20
"""A safetensors header (its JSON table of tensors) larger than this is refused."""
HEADER_BYTES_PER_TENSOR = 1024
"""When the tensors a model file must hold are known, its header may take this much per tensor
(plus `HEADER_SLACK`): a real entry (name, dtype, shape, offsets) takes about 100 bytes."""
HEADER_SLACK = 4096


class CheckpointError(RuntimeError):
    """A run directory or one of its files is missing, truncated, tampered with or incompatible."""


# -- atomic writes ----------------------------------------------------------------------------------
def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` so that a reader (or a kill) sees the old or the new file, never a mix; safe
    from several threads and processes at once (each writes its own temporary file)."""
    import threading

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    _fsync_write(tmp, data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2).encode())


def portable_paths(obj: Any, root: str | Path | None = None) -> Any:
    """`obj` (parsed JSON) with every string that is an absolute path inside `root` (default: the
    working directory, the project root for the CLI) made relative to it, so files that are
    shipped do not carry the training machine's folders."""
    root = str(Path(root or Path.cwd()).resolve()).rstrip("/") + "/"
    if isinstance(obj, dict):
        return {k: portable_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_paths(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(root):
        return obj[len(root):] or "."
    return obj


SHIPPED_FILES = (CONFIG_FILE, MODEL_FILE, "metrics.jsonl", "evaluation.json",
                 "metaworld_evaluation.json", "metaworld_evaluation_zeroshot.json",
                 "evaluation_unseen.json", GOAL_PROBE_FILE, "diagnosis_train.json")
"""What a shipped checkpoint holds (those of them the run has): weights, config, curves,
evaluations, the goal probe the app draws the agent's belief with and the diagnosis it came
from; never the resumable state or replay."""


def ship(run_dir: str | Path, dest: str | Path, root: str | Path | None = None) -> list[str]:
    """Copy a trained run's shippable files to `dest`, with `portable_paths` applied to its JSON
    files; returns the file names copied. The run must have a readable model."""
    import shutil

    run_dir, dest = Path(run_dir), Path(dest)
    read_run_info(run_dir)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in SHIPPED_FILES:
        src = run_dir / name
        if not src.is_file():
            continue
        if name.endswith(".json"):
            atomic_write_json(dest / name, portable_paths(json.loads(src.read_text()), root))
        else:
            shutil.copyfile(src, dest / name)
        copied.append(name)
    return copied


def _tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


def read_json(path: Path, max_bytes: int | None = None, max_depth: int | None = None) -> Any:
    """A JSON file's content, or CheckpointError: missing, too big, not JSON, nested too deep, or
    holding a number out of range."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes, more than the "
                              f"{max_bytes:,} allowed for this file")
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: also ints of too many digits
        raise CheckpointError(f"{path}: not valid JSON ({str(e)[:200]})") from None
    if max_depth is not None:
        _check_json_values(data, max_depth, path)
    return data


def _check_json_values(data: Any, max_depth: int, path: Path) -> None:
    """Walk a parsed JSON value without recursion: depth, integer size, finite floats."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            raise CheckpointError(f"{path}: nested more than {max_depth} levels deep")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and abs(value) > MAX_JSON_INT:
            raise CheckpointError(f"{path}: holds an integer with {value.bit_length()} bits, "
                                  f"beyond +-2^63")
        elif isinstance(value, float) and not math.isfinite(value):
            raise CheckpointError(f"{path}: holds a non-finite number ({value})")


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, or CheckpointError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e


# -- nested state (optimisers, counters) <-> tensors + JSON -------------------------------------------
def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor / array in a nested structure with a {"__tensor__": key} reference."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__tensor__": prefix, "numpy": True}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten_state(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix}")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise CheckpointError(f"{where}: tensor {key!r} is missing")
        return tensors[key].numpy() if obj.get("numpy") else tensors[key]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten_state(v, tensors, where) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors, where) for v in obj]
    if isinstance(obj, dict):
        raise CheckpointError(f"{where}: unexpected object in state")
    return obj


# -- the model --------------------------------------------------------------------------------------
def save_model(run_dir: str | Path, agent, info: dict[str, Any]) -> None:
    """Write model.safetensors, then config.json (info + format marker)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / MODEL_FILE, _tensor_bytes(agent.state_dict(), {"format": FORMAT}))
    atomic_write_json(run_dir / CONFIG_FILE, {"format": FORMAT, **info})


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such run directory")
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir}: expected a run directory (holding {CONFIG_FILE} and "
                              f"{MODEL_FILE}), got a file")
    path = run_dir / CONFIG_FILE
    info = read_json(path, MAX_CONFIG_BYTES, MAX_JSON_DEPTH)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a CMRL run config (format marker {FORMAT!r} missing)")
    for key, kind in (("config", dict), ("obs_dim", int), ("act_dim", int), ("text_encoder", dict),
                      ("train_tasks", list), ("test_tasks", list)):
        if not isinstance(info.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    _check_info_bounds(info, path)
    return info


def _check_info_bounds(info: dict[str, Any], path: Path) -> None:
    for key in ("obs_dim", "act_dim"):
        if isinstance(info[key], bool) or not 1 <= info[key] <= MAX_IO_DIM:
            raise CheckpointError(f"{path}: {key} must be from 1 to {MAX_IO_DIM}, got {info[key]}")
    dim = info["text_encoder"].get("dim", 0)
    if isinstance(dim, int) and not isinstance(dim, bool) and not 0 <= dim <= MAX_IO_DIM:
        raise CheckpointError(f"{path}: text_encoder.dim must be from 0 to {MAX_IO_DIM}, got {dim}")
    for key in ("train_tasks", "test_tasks"):
        tasks = info[key]
        if len(tasks) > MAX_TASKS or not all(isinstance(t, str) and len(t) <= 200 for t in tasks):
            raise CheckpointError(f"{path}: {key} must be a list of at most {MAX_TASKS} task names")


# -- what a model file must hold, checked before anything big is allocated ---------------------------
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
TensorSpec = tuple[torch.dtype, tuple[int, ...]]


def expected_tensors(build) -> dict[str, TensorSpec]:
    """Dtype and shape of every entry of the state dict of the module `build()` makes, built on the
    meta device: no memory is allocated for its tensors. Only this thread's default device changes."""
    with torch.device("meta"):
        module = build()
    return {k: (v.dtype, tuple(v.shape)) for k, v in module.state_dict().items()}


def state_bytes(spec: dict[str, TensorSpec]) -> int:
    return sum(math.prod(shape) * dtype.itemsize for dtype, shape in spec.values())


def read_tensor_header(path: Path, max_tensors: int | None = None) -> dict[str, TensorSpec]:
    """The table of a safetensors file (name -> dtype, shape), read without reading any tensor, and
    checked: every tensor's bytes lie inside the file and match its dtype and shape. With
    `max_tensors`, a header too long or holding too many keys for that many tensors is refused
    before it is parsed (keys counted as the header's colons: every key has one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    bad = f"{path}: not a readable safetensors file"
    limit = MAX_HEADER_BYTES
    if max_tensors is not None:
        limit = min(limit, HEADER_BYTES_PER_TENSOR * (max_tensors + 1) + HEADER_SLACK)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{bad} (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{bad} (header of {n:,} bytes in a file of {size:,})")
        if n > limit:
            raise CheckpointError(f"{bad} (header of {n:,} bytes, more than the {limit:,} its "
                                  f"{max_tensors} tensors need)")
        raw = f.read(n)
    if max_tensors is not None:
        keys, most = raw.count(b":"), 4 * (max_tensors + 1) + 64  # dtype, shape, offsets + name
        if keys > most:
            raise CheckpointError(f"{bad} (its header holds up to {keys:,} keys, more than the "
                                  f"{most:,} its {max_tensors} tensors need)")
    try:
        table = json.loads(raw)
    except (RecursionError, UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{bad} (its header is not valid JSON)") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{bad} (its header is not a JSON object)")
    data_size = size - 8 - n
    out: dict[str, TensorSpec] = {}
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(entry["shape"])
            start, end = entry["data_offsets"]
            ok = (all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_JSON_INT
                      for d in (*shape, start, end))
                  and end - start == math.prod(shape) * dtype.itemsize
                  and end <= data_size)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{bad} (entry {str(name)[:80]!r} is malformed or lies outside "
                                  "the file)")
        out[name] = (dtype, shape)
    return out


def check_model_file(path: Path, expected: dict[str, TensorSpec],
                     max_bytes: int | None = MAX_MODEL_BYTES) -> None:
    """Refuse a model whose networks exceed `max_bytes`, or whose file does not hold exactly the
    expected tensors (normaliser buffers may be absent: checkpoints older than them)."""
    path = Path(path)
    need = state_bytes(expected)
    if max_bytes is not None and need > max_bytes:
        params = sum(math.prod(s) for _, s in expected.values())
        raise CheckpointError(
            f"{path.parent / CONFIG_FILE}: describes networks of {params:,} parameters "
            f"({need / 2**20:,.0f} MiB), more than this loader's budget of "
            f"{max_bytes / 2**20:,.0f} MiB")
    header = read_tensor_header(path, max_tensors=len(expected))
    missing = sorted(k for k in set(expected) - set(header)
                     if not k.endswith(("obs_norm.mean", "obs_norm.std")))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the architecture in config.json "
                              f"(missing {missing[:5]}, unexpected {[u[:80] for u in unexpected[:5]]})")
    for k, (dtype, shape) in header.items():
        if (dtype, shape) != expected[k]:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {shape} {dtype}, expected "
                                  f"{expected[k][1]} {expected[k][0]}")


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    # Checkpoints from before observation standardisation have no normaliser buffers: they were
    # trained on raw observations, which is what the identity statistics the module starts with give.
    tensors = dict(tensors)
    for k in set(expected) - set(tensors):
        if k.endswith(("obs_norm.mean", "obs_norm.std")):
            tensors[k] = expected[k].clone()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the architecture in config.json "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for k, v in expected.items():
        t = tensors[k]
        if t.shape != v.shape or t.dtype != v.dtype:
            raise CheckpointError(f"{path}: tensor {k!r} has shape {tuple(t.shape)} {t.dtype}, "
                                  f"expected {tuple(v.shape)} {v.dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor {k!r} contains NaN or inf")
    module.load_state_dict(tensors)


# -- training state ---------------------------------------------------------------------------------
def save_training_state(run_dir: str | Path, tensors: dict[str, torch.Tensor | np.ndarray],
                        state: dict[str, Any]) -> None:
    """Write RUN/state/ as a whole: a new directory, fsynced, swapped in with renames."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / STATE_DIR, run_dir / f".{STATE_DIR}.tmp", run_dir / f".{STATE_DIR}.old"
    if not final.exists() and old.is_dir():
        os.replace(old, final)  # an earlier save was killed between its renames: keep that state
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    flat = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
            for k, v in tensors.items()}
    _fsync_write(tmp / "state.safetensors", _tensor_bytes(flat, {"format": FORMAT}))
    _fsync_write(tmp / "state.json", json.dumps({"format": FORMAT, **state}).encode())
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def is_run_dir(path: str | Path) -> bool:
    """Whether `path` is a run directory: weights and config side by side (a training-state folder
    inside a run, `state/` or `.state.old/`, is not one)."""
    path = Path(path)
    return ((path / CONFIG_FILE).is_file() and (path / MODEL_FILE).is_file()
            and path.name != STATE_DIR and not path.name.startswith(f".{STATE_DIR}"))


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run directory at or below `root`, in path order (none when `root` is not a folder)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [cfg.parent for cfg in sorted(root.rglob(CONFIG_FILE)) if is_run_dir(cfg.parent)]


def has_resumable_state(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a training state a run can be resumed from (`--resume`)."""
    run_dir = Path(run_dir)
    return (run_dir / STATE_DIR).is_dir() or (run_dir / f".{STATE_DIR}.old").is_dir()


def load_training_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    run_dir = Path(run_dir)
    folder = run_dir / STATE_DIR
    if not folder.is_dir() and (run_dir / f".{STATE_DIR}.old").is_dir():
        folder = run_dir / f".{STATE_DIR}.old"  # killed between the two renames of a save
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no training state to resume from")
    state = read_json(folder / "state.json")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{folder / 'state.json'}: not a CMRL training state")
    tensors, _ = read_tensors(folder / "state.safetensors")
    return tensors, state
