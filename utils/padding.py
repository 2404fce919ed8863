"""Zero padding to a multiple of a stride, and cropping back (published split: floor on top/left)."""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

Padding = Tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)


def padding_for(height: int, width: int, divisor: int) -> Padding:
    """The (left, right, top, bottom) padding that makes (height, width) multiples of divisor."""
    extra_h = -height % divisor
    extra_w = -width % divisor
    return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2


def pad_divide_by(tensors: Sequence[torch.Tensor], divisor: int) -> Tuple[List[torch.Tensor], Padding]:
    """Zero-pad the last two dims of every tensor (all of one size) to a multiple of divisor."""
    pad = padding_for(tensors[0].shape[-2], tensors[0].shape[-1], divisor)
    if not any(pad):
        return list(tensors), pad
    return [F.pad(t, pad) for t in tensors], pad


def unpad(tensor: torch.Tensor, pad: Padding) -> torch.Tensor:
    """Crop what `pad_divide_by` added."""
    left, right, top, bottom = pad
    height, width = tensor.shape[-2:]
    return tensor[..., top:height - bottom, left:width - right]
