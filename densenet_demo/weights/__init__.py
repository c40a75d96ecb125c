"""Which weights a model gets (``resolver``: one resolver, one loader), this project's checkpoints and runs on disk
(``checkpoints``: written atomically), and weights from elsewhere (``pretrained``: torchvision's ImageNet files)."""
