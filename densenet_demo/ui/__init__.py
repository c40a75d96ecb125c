"""The Gradio app: Predict, Fine-tune (live) and Architecture tabs over the engine.

The ONLY package that imports gradio. ``app`` assembles the page and launches it; each ``*_tab`` module holds
one tab's layout and handlers, which call the engine and turn its results (and its errors) into updates.
"""

from .app import LAUNCH_SETTINGS, build_app, launch

__all__ = ["build_app", "launch", "LAUNCH_SETTINGS"]
