"""Likely mislabels: out-of-sample probabilities for the images a run trained on, and the self-confidence rank.

A model grades the images it learned from too kindly: it has seen their labels, wrong ones included. What it
says about the images it never trained on (validation) can be taken as is; for the others we cross-fit, as
cleanlab does (Northcutt, Jiang and Chuang, "Confident Learning", https://arxiv.org/abs/1911.00068): the training
images are split into K folds, and each fold is predicted by a linear head trained on the other folds' pooled
features from the run's own backbone. Heads on frozen features take a second on a CPU, where K new training runs
would take K times the run. (The backbone did see every training label; on the digit scans with 5% of the labels
swapped, docs/review.md measures how well the rank finds the swapped files all the same.)

The rank is cleanlab's simplest, self-confidence: an image is a suspect when its out-of-sample prediction prefers
another class to its given label, and the lower the probability of the given label, the more suspicious.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CrossFit", "cross_fit_probabilities", "self_confidence_rank"]


@dataclass(frozen=True)
class CrossFit:
    """How the training images' out-of-sample probabilities are made (bench/review_precision.py measured these)."""

    folds: int = 5  # each head learns from 4/5 of the training images and predicts the remaining fifth
    # Full-batch AdamW steps over standardised features. On digits with 5% of the labels swapped, 25 to 50 steps
    # found the swapped files best (precision at k 0.937 / 0.926); 100 and 200 began to learn them (0.911 / 0.904).
    epochs: int = 50
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0


def cross_fit_probabilities(
    features: torch.Tensor, labels: torch.Tensor, n_classes: int, settings: CrossFit = CrossFit()
) -> torch.Tensor | None:
    """Softmax probabilities (rows of ``features``, on the CPU) each from a head that never saw that row's label.

    Returns None when there are too few images to leave a fold out (fewer than two per fold), and the caller falls
    back to the model's own probabilities.
    """
    n = len(labels)
    if settings.folds < 2 or n < 2 * settings.folds:
        return None
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(n, generator=generator)
    features = features.float().cpu()
    labels = labels.long().cpu()
    out = torch.empty(n, n_classes)
    for held_out in order.chunk(settings.folds):
        fit = torch.ones(n, dtype=torch.bool)
        fit[held_out] = False
        mean, std = features[fit].mean(0), features[fit].std(0) + 1e-6
        head = _fit_head((features[fit] - mean) / std, labels[fit], n_classes, settings, generator)
        with torch.no_grad():
            out[held_out] = head((features[held_out] - mean) / std).softmax(1)
    return out


def _fit_head(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, settings: CrossFit, generator: torch.Generator
) -> torch.nn.Linear:
    head = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():  # seeded init, so that a review gives the same ranks each time
        bound = 1 / x.shape[1] ** 0.5
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    with torch.enable_grad():
        for _ in range(settings.epochs):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(x), y).backward()
            optimizer.step()
    return head


def self_confidence_rank(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Indices of the suspects, most suspicious first: the rows whose most probable class is not their label,
    ordered by the probability of their label (lowest first; ties: the other class's probability, highest first)."""
    rows = np.arange(len(labels))
    p_label = probabilities[rows, labels]
    predicted = probabilities.argmax(1)
    suspects = rows[predicted != labels]
    p_other = probabilities[suspects, predicted[suspects]]
    return suspects[np.lexsort((-p_other, p_label[suspects]))]
