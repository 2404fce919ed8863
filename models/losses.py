"""Training losses: Lovász-softmax + NLL for the masks (SPEC 5), L1 for TinyFlowNet.

The mask losses take the logits of the soft aggregation (the tensor whose softmax over the
channels is the predicted probability). The NLL term is the published mean of -log of the
true class probability, computed as a log-softmax of the logits: equal to the published value
wherever that is finite, and with a finite gradient everywhere (a clamp of the probabilities
would give the most wrong pixels no gradient at all).

The void label (cfg.CONST.IGNORE_IDX: the affine fill, VOC void) is ignored by both mask
losses. This is the intent of the published code; its one-hot step turned those pixels into
background by accident.

Nothing here waits for the device: void pixels are masked instead of removed, and the
Lovász sorts run for every class (and image) in one batched sort.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F



def _lovasz_gradient(sorted_fg: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss for errors sorted in decreasing
    order along the last dimension; `sorted_fg` (..., P) is 1 where the pixel is of the class."""
    total = sorted_fg.sum(dim=-1, keepdim=True)
    intersection = total - sorted_fg.cumsum(dim=-1)
    union = total + (1 - sorted_fg).cumsum(dim=-1)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def _lovasz_groups(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Lovász-softmax of G groups of pixels: probs (G, C, P), labels (G, P) -> (G,) the mean over
    each group's present classes, and (G,) bool, whether the group has a valid pixel.

    An ignored pixel gets error 0 and counts for no class: it sorts after every pixel with a
    positive error, so it changes neither the value nor the gradient of the others."""
    classes = torch.arange(probs.shape[1], device=labels.device)
    fg = (labels[:, None, :] == classes[None, :, None]).to(probs.dtype)       # (G, C, P)
    valid = (labels != ignore_index)[:, None, :].to(probs.dtype)
    errors = (fg - probs).abs() * valid
    sorted_errors, order = errors.sort(dim=-1, descending=True)
    per_class = (sorted_errors * _lovasz_gradient(fg.gather(-1, order))).sum(dim=-1)   # (G, C)
    present = (fg.sum(dim=-1) > 0).to(probs.dtype)
    n_present = present.sum(dim=-1)
    return (per_class * present).sum(dim=-1) / n_present.clamp_min(1), n_present > 0


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                   per_image: bool = False) -> torch.Tensor:
    """Lovász-softmax loss (Berman et al. 2018) over the classes present in the labels.

    probs (N, C, *) class probabilities, labels (N, *) class indexes. per_image: the mean of
    each item's loss (items with no valid pixel skipped), else one loss over all pixels; 0
    when no pixel is valid.
    """
    probs = probs.float()
    n, channels = probs.shape[:2]
    if per_image:
        groups, group_labels = probs.reshape(n, channels, -1), labels.reshape(n, -1)
    else:
        groups = probs.movedim(1, 0).reshape(1, channels, -1)
        group_labels = labels.reshape(1, -1)
    losses, has_pixels = _lovasz_groups(groups, group_labels, ignore_index)
    weight = has_pixels.to(losses.dtype)
    return (losses * weight).sum() / weight.sum().clamp_min(1)


def nll_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean of -log softmax(logits) of the true class over non-ignored pixels (0 when none).
    logits (N, C, *), labels (N, *)."""
    log_probs = F.log_softmax(logits.float(), dim=1)
    valid = labels != ignore_index
    true_class = torch.where(valid, labels, 0).long().unsqueeze(1)
    picked = -log_probs.gather(1, true_class).squeeze(1)
    weight = valid.to(picked.dtype)
    return (picked * weight).sum() / weight.sum().clamp_min(1)


def segmentation_loss_terms(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                            first_frame: int = 1, per_image: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(Lovász-softmax, NLL) over frames `first_frame`.. of a clip (frame 0 is the given mask).

    logits (B, T, K, H, W) of the soft aggregation, labels (B, T, H, W) with `ignore_index`
    ignored. As published, both terms pool the pixels of all frames and clips of the batch
    (per_image=True: the Lovász term averages over frames instead).
    """
    flat_logits = logits[:, first_frame:].flatten(0, 1).float()     # (B * F, K, H, W)
    flat_labels = labels[:, first_frame:].flatten(0, 1)             # (B * F, H, W)
    probs = F.softmax(flat_logits, dim=1)
    return (lovasz_softmax(probs, flat_labels, ignore_index, per_image),
            nll_loss(flat_logits, flat_labels, ignore_index))


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
