"""`python app.py`: the CMRL demo on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT honoured).

Checkpoints and offline datasets are read only from checkpoints/, runs/ (and data/ for datasets);
`--allow-root DIR` (repeatable) or CMRL_ALLOWED_ROOTS=DIR1:DIR2 adds folders for a local user.
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
    args = p.parse_args(argv)
    return {"extra_roots": roots_from_env() + list(args.allow_root)}


if __name__ == "__main__":
    launch(build(**options()))
else:
    demo = build()  # `gradio app.py` and hosting platforms import the module and serve `demo`
