"""One image through torchvision eager, as a one-shot script would: the command-line bench's baseline.

    python bench/_torchvision_predict.py IMAGE WEIGHTS(.pth | run's model.safetensors)

Builds ``torchvision.models.densenet121`` with the weights, runs one warm-up forward on a blank image (the
Predictor warms up when it is built, too), then times PIL decode -> Resize(256) -> CenterCrop(224) -> Normalize
-> forward under ``no_grad`` -> softmax -> top-5 of IMAGE, and prints ``{"latency_ms": ...}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    image, weights = Path(sys.argv[1]), Path(sys.argv[2])
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(weights, weights_only=True)
    net = torchvision.models.densenet121(num_classes=state["classifier.weight"].shape[0])
    net.load_state_dict(state)
    net.eval()
    transform = torchvision.transforms.Compose(
        [
            torchvision.transforms.Resize(256),
            torchvision.transforms.CenterCrop(224),
            torchvision.transforms.ToTensor(),
            torchvision.transforms.Normalize(MEAN, STD),
        ]
    )
    with torch.no_grad():
        net(transform(Image.new("RGB", (256, 256)))[None])
        start = time.perf_counter()
        x = transform(Image.open(image).convert("RGB"))[None]
        logits = net(x)
        torch.softmax(logits, dim=1).topk(min(5, logits.shape[1]))
    print(json.dumps({"latency_ms": (time.perf_counter() - start) * 1000.0}))


if __name__ == "__main__":
    main()
