"""Metric-learning losses on tuples of unit-norm descriptors (torch).

A batch of T tuples is given as ``anchors`` (T, k), ``positives`` (T, k) and
``negatives`` (T, N, k). Distances are Euclidean; for unit vectors
``d^2 = 2 - 2 cos``, so d lies in [0, 2]. Both losses are averaged over the T tuples
(cirtorch sums them; with Adam the scale hardly matters).
"""
from __future__ import annotations

import torch

#: Default margins: contrastive 0.85 (cirtorch's best for GeM without an FC layer, on unit
#: vectors); triplet 0.1 (a margin on squared distances, which span [0, 4]).
DEFAULT_MARGINS = {"contrastive": 0.85, "triplet": 0.1}
LOSSES = tuple(DEFAULT_MARGINS)


def contrastive_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                     margin: float = DEFAULT_MARGINS["contrastive"]) -> torch.Tensor:
    """Contrastive loss (Hadsell et al. 2006, as in cirtorch), mean over tuples of
    ``1/2 d(a, p)^2 + sum_n 1/2 max(0, margin - d(a, n))^2``.

    Args:
        anchors: (T, k). positives: (T, k). negatives: (T, N, k).
        margin: negatives farther than this cost nothing.
    """
    d_pos = torch.linalg.vector_norm(anchors - positives, dim=-1)
    d_neg = torch.linalg.vector_norm(anchors[:, None, :] - negatives, dim=-1)
    per_tuple = 0.5 * d_pos.pow(2) + 0.5 * torch.clamp(margin - d_neg, min=0).pow(2).sum(dim=1)
    return per_tuple.mean()


def triplet_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                 margin: float = DEFAULT_MARGINS["triplet"]) -> torch.Tensor:
    """Triplet (ranking) loss on squared distances, as cirtorch's ``TripletLoss``: mean over
    tuples of ``sum_n max(0, d(a, p)^2 - d(a, n)^2 + margin)``.

    Args:
        anchors: (T, k). positives: (T, k). negatives: (T, N, k).
        margin: how much closer than each negative the positive must be (squared distance).
    """
    d_pos = (anchors - positives).pow(2).sum(dim=-1)
    d_neg = (anchors[:, None, :] - negatives).pow(2).sum(dim=-1)
    return torch.clamp(d_pos[:, None] - d_neg + margin, min=0).sum(dim=1).mean()


def tuple_loss(name: str, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
               margin: float | None = None) -> torch.Tensor:
    """``contrastive`` or ``triplet`` loss with ``margin`` (None: its default)."""
    if name not in DEFAULT_MARGINS:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    margin = DEFAULT_MARGINS[name] if margin is None else margin
    function = contrastive_loss if name == "contrastive" else triplet_loss
    return function(anchors, positives, negatives, margin)
