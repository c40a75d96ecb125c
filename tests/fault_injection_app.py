"""`python app.py`, with faults a test switches on by creating files in the folder $DENSENET_DEMO_FAULTS.

- ``step_error``: every training step (a loss computed with gradients on) raises ``RuntimeError``.
- ``save_enospc``: writing a checkpoint over an existing one fails half-way: "No space left on device".
- ``save_hang``: writing a checkpoint over an existing one writes half a file, creates ``save_hanging``,
  then waits for the test to kill the process in the middle of the write.

With none of the files present this is the app itself: the faults sit in the engine's own calls
(``torch.nn.functional.cross_entropy`` in training/loop.py, ``safetensors.torch.save_file`` in weights/checkpoints.py).

A script the tests start as a process (``script="tests/fault_injection_app.py"``), not a module to import.
"""

from __future__ import annotations

import errno
import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from densenet_demo.training import loop  # noqa: E402
from densenet_demo.weights import checkpoints  # noqa: E402

FAULTS = Path(os.environ["DENSENET_DEMO_FAULTS"])


class _Functional:
    """training/loop.py's ``F``, with a cross_entropy that fails in training steps while ``step_error`` exists."""

    def __getattr__(self, name: str):
        return getattr(F, name)

    @staticmethod
    def cross_entropy(*args, **kwargs):
        if torch.is_grad_enabled() and (FAULTS / "step_error").exists():
            raise RuntimeError("injected fault in a training step")
        return F.cross_entropy(*args, **kwargs)


_save_file = checkpoints.save_file


def _save_file_with_faults(tensors, filename, metadata=None):
    """Fails only when a checkpoint is already there: the previous best that must survive."""
    temp = Path(filename)
    if (temp.parent / checkpoints.CHECKPOINT_WEIGHTS).exists():
        if (FAULTS / "save_enospc").exists():
            temp.write_bytes(bytes(4096))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp))
        if (FAULTS / "save_hang").exists():
            temp.write_bytes(bytes(4096))
            (FAULTS / "save_hanging").write_text(str(temp))
            while True:  # until the test kills this process
                time.sleep(1)
    _save_file(tensors, filename, metadata=metadata)


loop.F = _Functional()
checkpoints.save_file = _save_file_with_faults
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
