"""The app starts in-process and its Adapt endpoint streams real renders and routing."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import cmrl
    from tests.test_end_to_end import tiny

    run = tmp_path_factory.mktemp("app") / "cmrl"
    cmrl.train(tiny("cmrl", steps=180), run, progress=False)
    return run


def test_app_adapt_streams(trained_run):
    from gradio_client import Client, handle_file  # noqa: F401

    from app.ui import build

    demo = build()
    demo.queue()
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port)
    try:
        client = Client(url, verbose=False)
        job = client.submit(str(trained_run), "window-close-v3", "close the window", 3, 1,
                            api_name="/adapt")
        outputs = list(job)
        assert len(outputs) >= 5
        from PIL import Image

        frames = [np.asarray(Image.open(o[0])) for o in outputs[:6]]
        assert frames[0].ndim == 3 and frames[0].std() > 5  # a real render, not blank
        assert any(not np.array_equal(frames[0], f) for f in frames[1:])
        routing = outputs[-1][1]
        assert routing is not None
        bad = client.submit(str(trained_run), "window-close-v3", "   ", 3, 1, api_name="/adapt")
        with pytest.raises(Exception, match="empty"):
            bad.result()
    finally:
        demo.close()
