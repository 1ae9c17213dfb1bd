"""`python app.py`: the CMRL demo on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT honoured)."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no network

from app.ui import build, launch  # noqa: E402

demo = build()

if __name__ == "__main__":
    launch(demo)
