"""Training losses: Lovász-softmax + NLL for the masks (SPEC 5), L1 for TinyFlowNet.

The void label (cfg.CONST.IGNORE_IDX: the affine fill, VOC void) is ignored by both mask losses. This is the intent of the
published code; its one-hot step turned those pixels into background by accident.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

PROB_EPS = 1e-7   # probabilities are clamped to at least this before the log


def _lovasz_gradient(sorted_fg: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss for errors sorted in decreasing
    order; `sorted_fg` (P, C) is 1 where the pixel belongs to the class."""
    total = sorted_fg.sum(dim=0, keepdim=True)
    intersection = total - sorted_fg.cumsum(dim=0)
    union = total + (1 - sorted_fg).cumsum(dim=0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def _lovasz_flat(probs: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
    """Mean over the present classes of the Lovász-softmax of (P, C) probabilities and (P,)
    labels already free of ignored pixels; None when there is no pixel."""
    if labels.numel() == 0:
        return None
    classes = torch.arange(probs.shape[1], device=labels.device)
    fg = (labels[:, None] == classes).to(probs.dtype)
    errors = (fg - probs).abs()
    sorted_errors, order = errors.sort(dim=0, descending=True)
    per_class = (sorted_errors * _lovasz_gradient(fg.gather(0, order))).sum(dim=0)
    present = fg.sum(dim=0) > 0
    return per_class[present].mean()


def _pixels(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """(N, C, *) and (N, *) -> the valid pixels as (P, C) and (P,)."""
    flat_probs = probs.movedim(1, -1).reshape(-1, probs.shape[1])
    flat_labels = labels.reshape(-1)
    valid = flat_labels != ignore_index
    return flat_probs[valid], flat_labels[valid]


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                   per_image: bool = False) -> torch.Tensor:
    """Lovász-softmax loss (Berman et al. 2018) over the classes present in the labels.

    probs (N, C, *) class probabilities, labels (N, *) class indexes. per_image: the mean of
    each item's loss (items with no valid pixel skipped), else one loss over all pixels.
    """
    probs = probs.float()
    items = zip(probs[:, None], labels[:, None]) if per_image else [(probs, labels)]
    losses = [_lovasz_flat(*_pixels(p, l, ignore_index)) for p, l in items]
    losses = [loss for loss in losses if loss is not None]
    return torch.stack(losses).mean() if losses else probs.sum() * 0


def nll_loss(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean negative log of the true class probability over non-ignored pixels (0 when none).
    probs (N, C, *), labels (N, *)."""
    probs = probs.float()
    if not bool((labels != ignore_index).any()):
        return probs.sum() * 0
    return F.nll_loss(probs.clamp_min(PROB_EPS).log(), labels.long(), ignore_index=ignore_index)


def segmentation_loss(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                      frames: Sequence[int] = (1, 2), per_image: bool = False) -> torch.Tensor:
    """Lovász-softmax + NLL over the given frames of a clip (frame 0 is the given mask).

    probs (B, T, K, H, W) probabilities, labels (B, T, H, W) with `ignore_index` ignored. As
    published, both terms pool the pixels of all frames and clips of the batch (per_image=True:
    the Lovász term averages over frames instead).
    """
    frames = list(frames)
    probs, labels = probs[:, frames], labels[:, frames]
    flat_probs = probs.flatten(0, 1)      # (B * F, K, H, W)
    flat_labels = labels.flatten(0, 1)    # (B * F, H, W)
    return (lovasz_softmax(flat_probs, flat_labels, ignore_index, per_image)
            + nll_loss(flat_probs, flat_labels, ignore_index))


def flow_loss(predicted: torch.Tensor, target: torch.Tensor,
              valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """TinyFlowNet's loss: mean absolute difference to the teacher flow.

    predicted, target (..., 2, H, W); valid (..., H, W) bool selects the pixels (e.g. not the
    affine fill, labels != 255), all of them when None.
    """
    difference = (predicted.float() - target.float()).abs()
    if valid is None:
        return difference.mean()
    weight = valid.unsqueeze(-3).to(difference.dtype)
    return (difference * weight).sum() / (weight.sum() * 2).clamp_min(1)
