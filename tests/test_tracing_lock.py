"""An ONNX export and a training step take turns on torch's process-wide tracing state (densenet_demo/tracing.py):
while one holds the lock, the other waits, and both then finish. Without it a visitor's training failed with
``KeyError: 'custom'`` while another visitor's export ran (seen in bench/soak.py)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers import train_config

from densenet_demo.model import DenseNet
from densenet_demo.serving import onnx_graph
from densenet_demo.tracing import TRACING
from densenet_demo.training.events import Finished, Step
from densenet_demo.training.loop import Trainer


def _in_thread(work) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.extend(work()), daemon=True)
    thread.start()
    return thread, out


def test_a_training_step_waits_while_an_export_traces(tiny_config, colours):
    config = train_config(tiny_config, epochs=1, batch_size=2)
    with TRACING:  # as an export holds it
        thread, events = _in_thread(lambda: Trainer(config, colours).run())
        time.sleep(1.0)
        assert not any(isinstance(event, Step) for event in events) and thread.is_alive()
    thread.join(timeout=120)
    assert isinstance(events[-1], Finished), events[-1]


@pytest.mark.e2e  # the dynamo exporter takes seconds even for a tiny model
def test_an_export_waits_while_a_step_runs(tiny_config):
    net = DenseNet(tiny_config).eval()
    with TRACING:  # as a training step holds it
        thread, out = _in_thread(lambda: [onnx_graph._to_onnx_bytes(net, torch.randn(1, 3, 16, 16), None)])
        time.sleep(0.5)
        assert out == [] and thread.is_alive()
    thread.join(timeout=300)
    assert len(out) == 1 and len(out[0]) > 1000  # the serialized model
