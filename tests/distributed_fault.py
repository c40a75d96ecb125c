"""`python -m densenet_demo ...` for one rank of a torchrun run, in which rank $DENSENET_DEMO_FAIL_RANK fails.

That rank's training loss raises ``RuntimeError`` from training step $DENSENET_DEMO_FAIL_STEP on (counted from
1 over the whole run); evaluation losses (``reduction="sum"``) are left alone. The other ranks are unchanged.
A script torchrun starts for each rank (test_distributed.py), not a module to import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.nn.functional as F  # noqa: E402

from densenet_demo.cli.main import main  # noqa: E402

if os.environ.get("RANK") == os.environ["DENSENET_DEMO_FAIL_RANK"]:
    cross_entropy, steps = F.cross_entropy, []

    def failing_cross_entropy(*args, **kwargs):
        if kwargs.get("reduction", "mean") == "mean":
            steps.append(1)
            if len(steps) >= int(os.environ["DENSENET_DEMO_FAIL_STEP"]):
                raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")
        return cross_entropy(*args, **kwargs)

    F.cross_entropy = failing_cross_entropy

if __name__ == "__main__":
    sys.exit(main())
