"""`python app.py`: the CMRL demo on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT honoured)."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from app.ui import build  # noqa: E402

if __name__ == "__main__":
    build().queue(max_size=16).launch()
