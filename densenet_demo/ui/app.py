"""The page: the three tabs assembled, the queue and the server settings, and the log for ``python app.py``.

Nothing is built at import time; per-user data lives in ``gr.State``; the only thing shared between users is
the predictor cache of read-only models.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import gradio as gr

from ..hosting import request_log, runs, sessions, upload_cache
from ..hosting.training_queue import TrainingQueue
from ..weights import checkpoints
from .agent_tools import wire_agent_tools
from .app_blocks import DemoBlocks
from .architecture_tab import build_architecture_tab, reuse_dropdown
from .common import list_runs, model_choices
from .finetune_data import session_state
from .finetune_tab import build_finetune_tab
from .predict_tab import build_predict_tab

__all__ = ["build_app", "launch", "mcp_server_enabled", "LAUNCH_SETTINGS", "MCP_TOOLS", "QUEUE_MAX_SIZE"]

# Server settings that Gradio's defaults leave open (see the README's reliability section).
MAX_FILE_SIZE = "200mb"  # one upload; a zip of a few thousand photos fits
QUEUE_MAX_SIZE = 64  # a flood gets "queue full" instead of growing memory without bound
MCP_ENV = "GRADIO_MCP_SERVER"  # Gradio's own switch for launch(mcp_server=...)
# The MCP server's tools: the two endpoints written for agents (agent_tools.py). The others stay API endpoints:
# they follow the page's session (a dataset, a run), which an MCP call does not keep from one call to the next.
MCP_TOOLS = ("classify_image", "architecture_table")

# Gradio's directory upload hands the server each file with only its bare name, which loses the
# class folders. This script copies each file's webkitRelativePath into a hidden textbox before the
# upload event fires, so the server can pair names back with their folders (finetune_tab.pair_folder_upload).
FOLDER_UPLOAD_JS = """
() => {
  document.addEventListener('change', (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== 'file' || !input.webkitdirectory) return;
    const box = document.querySelector('#folder-relpaths textarea');
    if (!box) return;
    box.value = JSON.stringify(Array.from(input.files).map(
      (f) => ({path: f.webkitRelativePath || f.name, size: f.size})));
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }, true);
}
"""

CSS = """
.progress-outer {background: var(--neutral-200); border-radius: 6px; height: 14px; overflow: hidden;}
.progress-inner {background: var(--color-accent); height: 14px; transition: width 0.3s;}
#predict-gallery .caption-label {white-space: normal; max-width: calc(100% - 8px); opacity: 0.9;}
"""

LAUNCH_SETTINGS: dict[str, Any] = {
    "max_file_size": MAX_FILE_SIZE,
    "show_error": False,  # user-facing messages go through gr.Error; tracebacks go to the server's log
    "js": FOLDER_UPLOAD_JS,
    "css": CSS,
    "ssr_mode": False,
}


def delete_cache_schedule() -> tuple[int, int]:
    """Gradio's ``delete_cache`` (every N seconds, delete its cached files older than M) on the sessions' clock:
    an upload outlives the session that sent it by at most a tenth of a session's life (checked every tenth of it,
    at most every 10 minutes), so the disk comes back to where it started once the sessions have expired. Never
    under a minute: a request may wait in the queue for a while before it reads its upload. The examples and the
    components' default files are Gradio's to keep."""
    life = max(60, int(sessions.STATE_TTL_S))
    return max(1, min(600, life // 10)), life


def build_app() -> gr.Blocks:
    """The page: three tabs, each wired to the engine. No model is built here."""
    models = model_choices()
    with DemoBlocks(title="DenseNet demo", delete_cache=delete_cache_schedule(), mcp_tools=MCP_TOOLS) as app:
        gr.Markdown(
            "# DenseNet, hands on\n"
            "Classify images, fine-tune on your own, and read how a DenseNet's channels grow "
            "([Huang et al., CVPR 2017](https://arxiv.org/abs/1608.06993))."
        )
        reuse = reuse_dropdown()  # rendered in the Architecture tab; made first so that training can refresh it
        state = session_state()  # the session: its folders and the owner token of its runs, for every tab
        with gr.Tab("Predict", id="predict"):
            predict = build_predict_tab(models, state, reuse)
        with gr.Tab("Fine-tune", id="finetune"):
            build_finetune_tab(models, predict_model=predict.model, reuse=reuse, state=state, trainings=TrainingQueue())
        with gr.Tab("Architecture", id="architecture"):
            architecture = build_architecture_tab(reuse, state)
        wire_agent_tools(predict, architecture, state)  # /classify_image, /architecture_table: the MCP tools
        # A page opened later sees the runs (its session may use) trained since the app started.
        app.load(list_runs, state, [predict.model, reuse], api_name="list_runs")
    _keep_page_files(app)
    return app


def _keep_page_files(app: gr.Blocks) -> None:
    """The files Gradio cached while the page was built (the examples' images, default values) stay for the
    server's life. Gradio keeps only some of them out of its ``delete_cache`` (not a ``gr.File``'s examples: the
    generated shapes would vanish from the page after the cache's age); a component's ``keep_in_cache`` is what
    both sweeps respect."""
    built = set().union(*app.temp_file_sets)
    holder = next(block for block in app.blocks.values() if hasattr(block, "keep_in_cache"))
    holder.keep_in_cache.update(built)


def _kept_files(app: gr.Blocks) -> set[str]:
    """The cached files Gradio keeps for the page's components: examples, default values."""
    return set().union(*(getattr(block, "keep_in_cache", set()) for block in list(app.blocks.values())))


def mcp_server_enabled() -> bool:
    """The MCP server (``/gradio_api/mcp/``): as ``GRADIO_MCP_SERVER`` says; unset, on wherever the ``mcp`` package
    is installed (``gradio[mcp]``, requirements.txt): it adds no measurable start-up time (README)."""
    configured = os.environ.get(MCP_ENV, "").strip().lower()
    if configured:
        return configured in ("1", "true", "yes", "on")
    return importlib.util.find_spec("mcp") is not None


def launch(app: gr.Blocks, **overrides: Any) -> None:
    """Launch with the server settings the README documents; GRADIO_SERVER_NAME/PORT are honoured.

    The runs' sharing rule and caps (``runs.settings``) apply from here; over a cap, runs go before serving.
    """
    request_log.configure_logging()
    # classify_image's session input gives an MCP call the runs every caller may use; Gradio warns about any
    # tool with a session input at each launch, which says nothing to the host.
    warnings.filterwarnings("ignore", message="This MCP server includes a tool that has a gr.State input")
    runs.note_launch(server_name=overrides.get("server_name"), share=bool(overrides.get("share")))
    sessions.sweep_stale_sessions()
    checkpoints.sweep_partial_files()
    limits = runs.settings()
    if limits.shared:
        runs.sweep_orphaned_runs(sessions.STATE_TTL_S)
    runs.enforce_limits(limits=limits)
    logging.getLogger(__name__).info("runs: %s", limits)
    app.queue(max_size=QUEUE_MAX_SIZE, default_concurrency_limit=1)
    if app.delete_cache:  # what Gradio's own sweep misses, on the same schedule (hosting/upload_cache.py)
        upload_cache.start(Path(app.GRADIO_CACHE), *app.delete_cache, keep=lambda: _kept_files(app))
    app.launch(**{**LAUNCH_SETTINGS, "mcp_server": mcp_server_enabled(), **overrides})
