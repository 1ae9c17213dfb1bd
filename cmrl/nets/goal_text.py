"""Goal texts as vectors: the whole sentence, or split into what to do and what to act on.

`split_goal` is a small rule over the words: the words naming a Meta-World object (and its
modifiers, such as "sliding") form the object phrase; the remaining content words, minus function
words, form the verb phrase:

    "pull out the drawer by its handle"  ->  ("pull out", "drawer handle")
    "close the window"                   ->  ("close", "window")

Embedded as one sentence, "open the drawer" and "close the drawer" are almost the same vector (the
object dominates; MiniLM cosine 0.91). Embedded apart, the verb and the object each get a vector of
their own, so a held-out pair such as (close, window) is made of parts that training has seen.

`embed_goals(encoder, texts, mode)` is the one place that turns goal texts into the goal vectors an
agent reads; `goal_dim` says how wide they are.
"""

from __future__ import annotations

import re

import numpy as np

from ..config import GOAL_ENCODINGS

OBJECT_WORDS = frozenset("""
    drawer drawers window windows door doors button buttons lever levers handle handles faucet tap
    dial knob peg pegs shelf shelves puck pucks ball balls basketball hoop basket box lid plate
    hammer nail nut bin bins stick coffee mug cup soccer goal wall table block blocks cube switch
    screw wrench disk disc hole holes edge hinge target position point spot gripper hand
""".split())
"""Nouns of the objects Meta-World's tasks act on."""

OBJECT_MODIFIERS = frozenset("sliding red blue green black white small big wooden metal top".split())
"""Adjectives that describe the object rather than the action."""

FUNCTION_WORDS = frozenset("the a an its it their this that to of by with from at for and please "
                           "then so as".split())


def split_goal(text: str) -> tuple[str, str]:
    """(verb phrase, object phrase) of a goal text. A part the rule cannot find falls back to the
    whole text, so both parts are always non-empty."""
    words = re.findall(r"[a-z]+", text.lower())
    obj = [w for w in words if w in OBJECT_WORDS or w in OBJECT_MODIFIERS]
    if not any(w in OBJECT_WORDS for w in obj):
        obj = []
    verb = [w for w in words if w not in obj and w not in FUNCTION_WORDS]
    whole = " ".join(text.split())
    return (" ".join(verb) or whole, " ".join(obj) or whole)


def goal_dim(text_dim: int, mode: str) -> int:
    """Width of the goal vectors for a text encoder of `text_dim` dims."""
    if mode not in GOAL_ENCODINGS:
        raise ValueError(f"unknown goal encoding {mode!r}; use {' or '.join(GOAL_ENCODINGS)}")
    return 2 * text_dim if mode == "verb_object" else text_dim


def embed_goals(encoder, texts: str | list[str], mode: str = "sentence") -> np.ndarray:
    """Goal vectors [N, goal_dim] ([goal_dim] for one string). `verb_object`: [verb ; object]."""
    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    goal_dim(encoder.dim, mode)  # validates the mode
    if mode == "sentence":
        out = encoder.encode(items)
    else:
        parts = [split_goal(t) for t in items]
        out = np.concatenate([encoder.encode([v for v, _ in parts]),
                              encoder.encode([o for _, o in parts])], axis=-1)
    return out[0] if single else out
