"""Input components that hand the handler the value exactly as it was sent.

Gradio's own checks on a Number, Slider, Dropdown or Radio value run before the handler, and on a
bad value (None or text in a slider, a value not among the choices) they fail with a type error or
with a message that echoes the whole input and logs a traceback. On a public page the API is
reachable by anyone, so every value goes to the handler unchanged instead, and the handler's parsing
(`common.parse_*`) answers with one clear, short message. In the browser these render exactly like
the gradio components they extend (`is_template`: the frontend of the parent class).
"""

from __future__ import annotations

import gradio as gr


class NumberInput(gr.Number):
    is_template = True

    def preprocess(self, payload):
        return payload


class SliderInput(gr.Slider):
    is_template = True

    def preprocess(self, payload):
        return payload


class DropdownInput(gr.Dropdown):
    is_template = True

    def preprocess(self, payload):
        return payload


class RadioInput(gr.Radio):
    is_template = True

    def preprocess(self, payload):
        return payload
