"""Regional attention maps: each object's box, grown by a margin, as a 0/1 map.

For each batch item and each object channel k >= 1 the pixels with probability >= the
threshold are counted. Fewer than `min_pixels`: the box is the whole image. Otherwise it is
the tight box of those pixels grown by `margin` on every side and clamped to the image.
Channel 0 (background) is all zero with box (0, 0, 0, 0). Boxes are (x_min, x_max, y_min,
y_max), inclusive, int32. CUDA tensors use the kernel when it builds; everything else (and
CUDA when the build fails) uses `regional_attention_map_torch`, which gives identical results.
"""
import logging
import os
from typing import Tuple

import torch

from extensions.build import load_extension

logger = logging.getLogger(__name__)
_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = [os.path.join(_HERE, 'reg_att_map_generator_cuda.cpp'),
            os.path.join(_HERE, 'reg_att_map_generator.cu')]
EXTENSION_NAME = 'rmnet_reg_att_map_generator'


def regional_attention_map_torch(mask: torch.Tensor, prob_threshold: float = 0.5,
                                 min_pixels: int = 10,
                                 margin: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """PyTorch path: works on any device, no host synchronisation."""
    batch, channels, height, width = mask.shape
    inside = mask[:, 1:] >= prob_threshold
    n_pixels = inside.sum(dim=(2, 3))
    cols = inside.any(dim=2).to(torch.uint8)
    rows = inside.any(dim=3).to(torch.uint8)
    x_min = cols.argmax(dim=2)
    x_max = width - 1 - cols.flip(2).argmax(dim=2)
    y_min = rows.argmax(dim=2)
    y_max = height - 1 - rows.flip(2).argmax(dim=2)
    small = n_pixels < min_pixels
    x_min = torch.where(small, 0, (x_min - margin).clamp(min=0))
    x_max = torch.where(small, width - 1, (x_max + margin).clamp(max=width - 1))
    y_min = torch.where(small, 0, (y_min - margin).clamp(min=0))
    y_max = torch.where(small, height - 1, (y_max + margin).clamp(max=height - 1))
    boxes = torch.zeros(batch, channels, 4, dtype=torch.int32, device=mask.device)
    boxes[:, 1:] = torch.stack([x_min, x_max, y_min, y_max], dim=2).to(torch.int32)

    xs = torch.arange(width, device=mask.device)
    ys = torch.arange(height, device=mask.device)
    in_x = (xs >= x_min[..., None]) & (xs <= x_max[..., None])
    in_y = (ys >= y_min[..., None]) & (ys <= y_max[..., None])
    att_map = torch.zeros(batch, channels, height, width, dtype=torch.float32, device=mask.device)
    att_map[:, 1:] = (in_y[..., :, None] & in_x[..., None, :]).float()
    return att_map, boxes


def _cuda_module():
    return load_extension(EXTENSION_NAME, _SOURCES, cuda=True)


def cuda_kernel_available() -> bool:
    """True when the CUDA kernel is (or can be) built and a GPU is present."""
    return torch.cuda.is_available() and _cuda_module() is not None


def regional_attention_map(mask: torch.Tensor, prob_threshold: float = 0.5, min_pixels: int = 10,
                           margin: int = 64,
                           use_cuda_kernel: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) probabilities -> (B, K, H, W) float 0/1 map and (B, K, 4) int32 boxes."""
    if mask.dim() != 4:
        raise ValueError(f'regional_attention_map expects a (B, K, H, W) map, got {tuple(mask.shape)}')
    mask = mask.detach()
    if mask.is_cuda and use_cuda_kernel:
        module = _cuda_module()
        if module is not None:
            att_map, boxes = module.forward(mask.float().contiguous(), float(prob_threshold),
                                            int(min_pixels), int(margin))
            return att_map, boxes
    return regional_attention_map_torch(mask.float(), prob_threshold, min_pixels, margin)


class RegionalAttentionMapGenerator(torch.nn.Module):
    """Module form with the published call signature; it has no parameters."""

    def forward(self, mask: torch.Tensor, prob_threshold: float = 0.5, n_pts_threshold: int = 10,
                n_bbox_loose_pixels: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
        return regional_attention_map(mask, prob_threshold, n_pts_threshold, n_bbox_loose_pixels)
