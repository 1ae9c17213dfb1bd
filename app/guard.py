"""The one door every request passes: `PageBlocks`, the page's gr.Blocks.

Gradio checks a request only in part before it runs an event: a raw POST with fewer values than the
endpoint takes fails inside gradio with a traceback in the log and `{"error": null}` for the caller;
an endpoint marked private can still be run by its index through the queue (and by its name through
/gradio_api/call/); an unknown endpoint name or index is an HTTP 500 with a traceback. Here, for
every endpoint at once:

- `process_api` (gradio's dispatch of every event, queued or not) refuses a private endpoint that is
  not called by the component whose event it serves, and a request whose number of values is not
  the endpoint's; `preprocess_data` turns any failure of gradio's own processing of a value (a file
  reference the server did not hand out, a value its model rejects) into the same refusal;
- `RefuseMalformed`, an ASGI middleware `launch` installs, answers an exception that escapes one of
  gradio's routes before any response began (unknown endpoint name or index) with HTTP 400.

Each gets the page's one-line answer (`MALFORMED`), logged as one line without traceback. Errors of
the page's own handlers are theirs to answer (`base.page_error`). A request that took long (a
checkpoint refused after loading, a routing inspection) is followed by `release_memory_soon`.

Private endpoints are a filter, not access control: the page's own requests name the triggering
component, and a client that copies them exactly gets what the page shows.
"""

from __future__ import annotations

import json
import time

import gradio as gr

from .base import log, page_error
from .common import InputError, release_memory_soon

MALFORMED = ("Malformed request: {detail}. Call the endpoints listed on this page's "
             "\"Use via API\" page, each with all its values.")
RELEASE_AFTER_S = 1.0
"""A request that ran this long is followed by `release_memory_soon`."""


def refusal(detail: str) -> gr.Error:
    return page_error(InputError(MALFORMED.format(detail=detail)))


class PageBlocks(gr.Blocks):
    """gr.Blocks whose dispatch refuses malformed requests for every endpoint at once."""

    async def process_api(self, block_fn, inputs, state=None, request=None, iterator=None,
                          session_hash=None, event_id=None, event_data=None, **kwargs):
        fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        if iterator is None:  # a new call, not the next step of a stream
            if fn.api_visibility == "private" and not _own_trigger(self, fn, state, event_data):
                raise refusal("no such endpoint")
            if not fn.batch and not fn.cancels and (not isinstance(inputs, list)
                                                   or len(inputs) != len(fn.inputs)):
                # as an API client counts them: gr.State inputs are not sent
                wanted = sum(not getattr(b, "skip_api", False) for b in fn.inputs)
                got = len(inputs) if isinstance(inputs, list) else type(inputs).__name__
                raise refusal(f"{fn.api_name or 'this endpoint'} takes {wanted} value"
                              f"{'s' if wanted != 1 else ''}, got {got}")
        t0 = time.monotonic()
        ended = True
        try:
            out = await super().process_api(block_fn, inputs, state, request, iterator,
                                            session_hash, event_id, event_data, **kwargs)
            ended = not out.get("is_generating")
            return out
        finally:
            if ended and time.monotonic() - t0 >= RELEASE_AFTER_S:
                release_memory_soon()

    async def preprocess_data(self, block_fn, inputs, state, *args, **kwargs):
        try:
            return await super().preprocess_data(block_fn, inputs, state, *args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # gradio's own checks of a value, before any handler runs
            raise refusal(f"a value is not of the kind its input takes ({type(e).__name__})") from e

    def launch(self, *args, **kwargs):
        from starlette.middleware import Middleware

        app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
        app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(RefuseMalformed)]
        return super().launch(*args, app_kwargs=app_kwargs, **kwargs)


def _own_trigger(blocks: gr.Blocks, fn, state, event_data) -> bool:
    """Whether a call of private `fn` names, as its trigger, a component whose event it serves (as
    the page's own requests do); a page-load event has no trigger component."""
    target = getattr(event_data, "target", None)
    if target is None:
        return bool(fn.targets) and all(event == "load" for _, event in fn.targets)
    found = state.blocks_config.blocks if state is not None else blocks.blocks
    return any(found.get(block_id) is target for block_id, _ in fn.targets)


class RefuseMalformed:
    """ASGI middleware: an exception escaping a route before its response began (gradio raises
    one for an unknown endpoint name or index) becomes HTTP 400 with `MALFORMED`, logged as one
    line; once a response has begun, the exception goes on as before."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as e:
            if started:
                raise
            msg = MALFORMED.format(detail="no such endpoint, or values it cannot take")
            log.info("refused: %s %s: %s (%s)", scope.get("method"), scope.get("path", "")[:100],
                     msg, type(e).__name__)
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body",
                        "body": json.dumps({"detail": msg}).encode()})
