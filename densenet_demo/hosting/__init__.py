"""Serving many people from one process: where GPU work runs (``gpu``), users' sessions (``sessions``), which
runs a session may see and how long runs are kept (``runs``), and the process's memory (``memory``)."""
