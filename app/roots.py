"""Where the page may read from: the allow-list of folders for checkpoints and offline datasets.

On a public page every endpoint takes whatever a visitor sends, so a checkpoint or dataset path is
honoured only inside the folders the app was started with: `checkpoints/` and `runs/` for run
directories (plus `data/` for datasets), and any folder the local user adds with
`python app.py --allow-root DIR` or `CMRL_ALLOWED_ROOTS=DIR1:DIR2`. Anything else, whether it
exists or not, is a file or a folder, gets one and the same message, so the page cannot be used to
map the server's filesystem. Paths are resolved (symlinks, `..`) before they are compared, and so
is every file and folder inside the folder named (`common.leaves_roots`): a run directory whose
config.json links to /etc/passwd is refused with that same message before anything in it is read.
(A link made between this check and the read is not caught: whoever can make links in an allowed
root can already put any content there.)
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import MAX_FOLDER_ENTRIES, ROOT, InputError, clean_text, display_path, leaves_roots

ENV_ROOTS = "CMRL_ALLOWED_ROOTS"
CHECKPOINT_ROOTS = (ROOT / "checkpoints", ROOT / "runs")
DATA_ROOTS = (ROOT / "data",)
CHECKPOINT_UNAVAILABLE = ("That checkpoint is not available on this page: pick one from the list "
                          "(run directories under {roots}).")
DATASET_UNAVAILABLE = ("That offline dataset is not available on this page: give a folder made by "
                       "`python -m cmrl data --out data/NAME` under {roots}.")
TOO_MANY_FILES = (f"{{what}} holds more than {MAX_FOLDER_ENTRIES:,} files and folders: name a run "
                  "directory or a dataset folder itself, not a folder of them.")


def roots_from_env() -> list[Path]:
    """The extra roots named in CMRL_ALLOWED_ROOTS (os.pathsep-separated; empty entries skipped)."""
    return [Path(p).expanduser() for p in os.environ.get(ENV_ROOTS, "").split(os.pathsep)
            if p.strip()]


def inside(path: Path, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(root).resolve())


class Roots:
    """The folders checkpoints and datasets may be read from."""

    def __init__(self, checkpoint_roots: list[Path] | None = None,
                 extra_roots: list[Path] | None = None):
        extra = [Path(r) for r in (roots_from_env() if extra_roots is None else extra_roots)]
        base = [Path(r) for r in (checkpoint_roots or CHECKPOINT_ROOTS)]
        self.checkpoints = _unique(base + extra)
        self.data = _unique(list(DATA_ROOTS) + self.checkpoints)

    def add_checkpoint_root(self, root: Path) -> None:
        if not any(inside(root, r) for r in self.checkpoints):
            self.checkpoints.append(Path(root))
            self.data.append(Path(root))

    def checkpoint(self, text) -> Path:
        """The run directory `text` names, if it is an existing folder under a checkpoint root."""
        return self._resolve(text, "The checkpoint", self.checkpoints, CHECKPOINT_UNAVAILABLE)

    def dataset(self, text) -> Path:
        """The dataset folder `text` names, if it is an existing folder under a data root."""
        return self._resolve(text, "The offline dataset", self.data, DATASET_UNAVAILABLE)

    def readable(self, folder: Path) -> bool:
        """Whether everything under `folder` (a run directory the page found itself) lies inside
        the checkpoint roots, all links followed."""
        return leaves_roots(folder, self.checkpoints) is None

    @staticmethod
    def _resolve(text, what: str, roots: list[Path], unavailable: str) -> Path:
        text = clean_text(text, what)
        why = "link"
        try:
            p = Path(text)
            p = (p if p.is_absolute() else ROOT / p).resolve()
            if any(p.is_relative_to(r.resolve()) for r in roots) and p.is_dir():
                why = leaves_roots(p, roots)
        except (OSError, RuntimeError, ValueError):  # name too long, symlink loop
            pass
        if why == "size":
            raise InputError(TOO_MANY_FILES.format(what=what))
        if why is not None:
            raise InputError(unavailable.format(roots=", ".join(f"{display_path(r)}/"
                                                                for r in roots)))
        return p


def _unique(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if all(p.resolve() != q.resolve() for q in out):
            out.append(p)
    return out
