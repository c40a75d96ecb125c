"""`python app.py` with the session state's time to live cut to SHORT_TTL_S, for the test that sessions expire."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from densenet_demo import ui  # noqa: E402
from densenet_demo.hosting import sessions  # noqa: E402

SHORT_TTL_S = 6  # long enough that a busy machine does not expire a session between two calls

if __name__ == "__main__":
    sessions.STATE_TTL_S = SHORT_TTL_S  # read when the page is built
    ui.launch(ui.build_app())
