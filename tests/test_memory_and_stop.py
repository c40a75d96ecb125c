"""A server's memory stays bounded over many training runs, and Stop acts inside a step, not after it."""

from __future__ import annotations

import threading

import pytest
import torch

from densenet_demo.data import datasets as data
from densenet_demo.data import examples
from densenet_demo.hosting import memory
from densenet_demo.model import DenseLayer, Transition
from densenet_demo.training.config import TrainConfig
from densenet_demo.training.events import CancelToken, Finished
from densenet_demo.training.loop import Trainer

# Each run's memory is handed back: after the fourth run the process holds at most this much more than after the first.
MEMORY_MARGIN_BYTES = 64 * 2**20


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> data.LabeledFiles:
    root = examples.make_example_dataset(tmp_path_factory.mktemp("shapes") / "d", n_per_class=6, image_size=32, seed=2)
    return data.load_image_folder(root)[0]


def _config(**changes) -> TrainConfig:
    base = dict(model="densenet_fashion", weights="random", mode="scratch", epochs=1, batch_size=8, image_size=32)
    return TrainConfig(**{**base, **changes})


def _run_in_a_new_thread(files: data.LabeledFiles, runs_root) -> None:
    """As the server runs a training: in a worker thread (each may get its own malloc arena), then released."""

    def run() -> None:
        trainer = Trainer(_config(), files, runs_root=runs_root)
        assert isinstance(list(trainer.run())[-1], Finished)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    memory.release_freed_memory()


@pytest.mark.skipif(memory.rss_bytes() is None, reason="needs /proc/self/status (Linux)")
def test_four_runs_in_one_process_hold_no_more_memory_than_one(shapes, tmp_path):
    _run_in_a_new_thread(shapes, tmp_path)
    after_first = memory.rss_bytes()
    for _ in range(3):
        _run_in_a_new_thread(shapes, tmp_path)
    growth = memory.rss_bytes() - after_first
    assert growth < MEMORY_MARGIN_BYTES, f"memory grew by {growth / 2**20:.0f} MiB over three more runs"


def test_stop_in_the_middle_of_the_first_step_ends_the_run_before_the_step_completes(shapes):
    """Cancelled while the forward pass is half-way through the network: no step completes, no checkpoint."""
    cancel = CancelToken()
    layers = 0

    def cancel_at_the_fourth_layer(module, args):
        nonlocal layers
        layers += 1
        if layers == 4:
            cancel.cancel()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: cancel_at_the_fourth_layer(module, args) if isinstance(module, DenseLayer) else None
    )
    try:
        trainer = Trainer(_config(), shapes)
        kinds = [event.kind for event in trainer.run(cancel) if event.kind != "preparing"]
    finally:
        handle.remove()
    assert kinds == ["started", "cancelled"]
    assert layers == 4  # the fifth layer never ran
    # The kept model carries no stop hooks: it predicts as any model does.
    hooked = [m for m in trainer.model.modules() if isinstance(m, (DenseLayer, Transition)) and m._forward_pre_hooks]
    assert not hooked


def test_stop_during_the_backward_pass_ends_the_run_before_the_optimizer_step(shapes):
    cancel = CancelToken()

    def cancel_when_the_gradient_arrives(module, args, output):
        if isinstance(module, torch.nn.Linear) and output.requires_grad:
            output.register_hook(lambda grad: cancel.cancel())

    handle = torch.nn.modules.module.register_module_forward_hook(cancel_when_the_gradient_arrives)
    try:
        trainer = Trainer(_config(), shapes)
        events = list(trainer.run(cancel))
    finally:
        handle.remove()
    assert [e.kind for e in events if e.kind != "preparing"] == ["started", "cancelled"]
    assert events[-1].checkpoint_dir is None  # no step completed: nothing trained to keep
