"""The reference that the quick path is measured against: the plain PyTorch loop a newcomer would write.

    python bench/plain_loop.py DATA --image-size 32 --epochs 2 [--threads 2]

torchvision's ``densenet121(num_classes=N)`` from random weights, Adam 1e-3, batch 16, ``Resize((S, S))`` and
ImageNet normalisation, no augmentation, ``torch.manual_seed(0)``; the images from ``ImageFolder`` (RGB), split
80/20 by ``random_split`` with a generator seeded 0, or the data's own ``train/`` and ``val/`` folders. Seeded, so
every run of it reaches the same accuracies: it is the strong reference, not the weakest of several runs.

Prints one JSON line after each epoch's validation (``{"epoch": 1, "val_acc": ...}``) as it happens, so that a
parent process can time each line from this process's launch, as it times the other side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torchvision import transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _datasets(root: Path, size: int) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, int]:
    transform = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = torchvision.datasets.ImageFolder(root / "train", transform)
        return train, torchvision.datasets.ImageFolder(root / "val", transform), len(train.classes)
    full = torchvision.datasets.ImageFolder(root, transform)
    n_train = round(0.8 * len(full))
    train, val = torch.utils.data.random_split(
        full, [n_train, len(full) - n_train], generator=torch.Generator().manual_seed(0)
    )
    return train, val, len(full.classes)


def _accuracy(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    model.train()
    return correct / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a folder of class subfolders (or train/ and val/)")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, val, n_classes = _datasets(args.data, args.image_size)
    train_loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=16)
    model = torchvision.models.densenet121(num_classes=n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(1, args.epochs + 1):
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(json.dumps({"epoch": epoch, "val_acc": round(_accuracy(model, val_loader), 4)}), flush=True)
    print(json.dumps({"threads": torch.get_num_threads(), "train": len(train), "val": len(val)}), file=sys.stderr)


if __name__ == "__main__":
    main()
