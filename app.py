"""`python app.py`: the CMRL demo on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT honoured).

Checkpoints and offline datasets are read only from checkpoints/, runs/ (and data/ for datasets);
`--allow-root DIR` (repeatable) or CMRL_ALLOWED_ROOTS=DIR1:DIR2 adds folders for a local user.
`--ray-address http://head:8265` (or CMRL_RAY_ADDRESS) launches the Train tab's runs as jobs on that
Ray cluster, `--ray-storage DIR` (or CMRL_RAY_STORAGE) puts them on storage it shares (docs/ray.md).
"""
import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no network

from app.roots import roots_from_env  # noqa: E402
from app.ui import build, launch  # noqa: E402


def options(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                   help="also load checkpoints and datasets from DIR (and list its run directories)")
    p.add_argument("--ray-address", metavar="URL",
                   help="launch training as jobs on the Ray cluster whose dashboard is at URL "
                        "(e.g. http://head:8265; default: CMRL_RAY_ADDRESS, else on this machine)")
    p.add_argument("--ray-storage", metavar="DIR",
                   help="a folder this page and every cluster node see at the same path: runs "
                        "go to DIR/runs, recipe data to DIR/data (default: CMRL_RAY_STORAGE)")
    args = p.parse_args(argv)
    for var, value in (("CMRL_RAY_ADDRESS", args.ray_address), ("CMRL_RAY_STORAGE", args.ray_storage)):
        if value:
            os.environ[var] = value  # read by app.jobs.JobManager
    return {"extra_roots": roots_from_env() + list(args.allow_root)}


if __name__ == "__main__":
    launch(build(**options()))
else:
    demo = build()  # `gradio app.py` and hosting platforms import the module and serve `demo`
