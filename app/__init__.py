"""Gradio UI around the cmrl library: layout, event wiring and figures only (no RL math here).

Importing the package switches gradio's analytics off and selects headless rendering before gradio or
mujoco are imported, so the app never reaches out to the network.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
