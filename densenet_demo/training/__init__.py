"""Training runs: their settings (``config``: TrainConfig and the recipes; ``settings``: by name, for both faces),
what a run is built from (``build``), the loop (``loop``), what it reports (``events``) and leaves (``record``),
how it is paced (``pacing``), fed (``data``), scored (``evaluation``), paused and resumed (``state``), shared
between processes (``distributed``), where it runs (``runners``: here, ZeroGPU calls, a ``torchrun`` child), and
advice before a run (``advice``, ``timing``). docs/architecture.md draws the arrows between them."""
