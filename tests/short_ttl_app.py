"""`python app.py` with the session state's time to live cut to helpers.SHORT_TTL_S, for the tests that sessions
expire. A script the tests start as a process (``AppServer.started(..., script="tests/short_ttl_app.py")``), not a
module to import."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import SHORT_TTL_S  # noqa: E402  (tests/ is on the path: this script sits there)

from densenet_demo import ui  # noqa: E402
from densenet_demo.hosting import sessions  # noqa: E402

if __name__ == "__main__":
    sessions.STATE_TTL_S = SHORT_TTL_S  # read when the page is built
    ui.launch(ui.build_app())
