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
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "cmrl-run-v1"
MODEL_FILE, CONFIG_FILE, STATE_DIR = "model.safetensors", "config.json", "state"


class CheckpointError(RuntimeError):
    """A run directory or one of its files is missing, truncated, tampered with or incompatible."""


# -- atomic writes ----------------------------------------------------------------------------------
def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _fsync_write(tmp, data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2).encode())


def _tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


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
    info = read_json(run_dir / CONFIG_FILE)
    path = run_dir / CONFIG_FILE
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a CMRL run config (format marker {FORMAT!r} missing)")
    for key, kind in (("config", dict), ("obs_dim", int), ("act_dim", int), ("text_encoder", dict),
                      ("train_tasks", list), ("test_tasks", list)):
        if not isinstance(info.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    return info


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
