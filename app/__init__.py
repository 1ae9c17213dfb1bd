"""Gradio UI around the cmrl library: layout, event wiring and figures only (no RL math here)."""
