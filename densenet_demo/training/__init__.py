"""Training runs: their settings (``setup``, ``settings``), the loop (``loop``) and what it reports (``events``),
how a run is paced (``pacing``), fed (``data``), scored (``evaluation``), paused and resumed (``state``), where it
runs (``runners``, ``torchrun``, ``distributed``), and advice before a run (``advice``)."""
