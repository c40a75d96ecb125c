"""One lock for torch's tracing state, which is global to the process.

``torch.fx.traceback.current_meta`` is a module-level dict: an ONNX export (``torch.onnx.export(dynamo=True)``)
writes it while it traces, and so does every function torch keeps out of its compiler (an optimizer's
``zero_grad`` and ``step``, ``torch.manual_seed``, activation checkpointing), each entering and leaving
``torch.fx.traceback.annotate``. Two threads doing so at once break each other (torch 2.14): a training on a
shared server failed with ``KeyError: 'custom'`` while another visitor's ONNX export ran. So an export and a
training step (or a timing step, or a run's seeding) take turns: a step waits for an export (seconds), an
export for at most one step. Other calls into such functions from other threads at once remain exposed
(docs/reliability.md).
"""

from __future__ import annotations

import threading

__all__ = ["TRACING"]

TRACING = threading.Lock()
