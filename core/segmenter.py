"""VideoSegmenter: stream frames in, get masks out (TinyFlowNet + RMNet, test-time augmentation).

    seg = VideoSegmenter('RMNet-DAVIS.pth', device='cuda')
    seg.add_object(30, mask_of_a_late_object)        # optional, before or during segment()
    for mask in seg.segment(frames, first_mask):      # frames: any iterable of HxWx3 uint8 RGB
        ...                                           # mask: HxW uint8 with the given object ids

Each variant of test-time augmentation (every scale of TEST.FRAME_SCALES, and its mirror with
TEST.FLIP_LR) runs its own frame loop; their probabilities are resized back and averaged, as
the published multi-scale test does. The flow of frame t is computed from frames t and t-1
inside the loop, at the input scale, and resized for each variant.
"""
import contextlib
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from config import cfg as default_cfg
from core.inference_core import InferenceCore
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import load_networks

logger = logging.getLogger(__name__)


class SegmentationError(ValueError):
    """Input that cannot be segmented (bad mask, too many objects, ...); the message says why."""


@dataclass(frozen=True)
class Variant:
    """One test-time augmentation: a scale and an optional left-right flip."""
    scale: float
    flip: bool


def pick_device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


class VideoSegmenter:
    """Semi-supervised video object segmentation of one video at a time."""

    def __init__(self, weights: Optional[str] = None, device: Union[str, torch.device, None] = None,
                 cfg: Optional[dict] = None, tflownet: Optional[TinyFlowNet] = None,
                 rmnet: Optional[RMNet] = None):
        self.cfg = cfg or default_cfg
        self.device = pick_device(device)
        self.tflownet = tflownet or TinyFlowNet(self.cfg)
        self.rmnet = rmnet or RMNet(self.cfg)
        if weights is not None:
            load_networks(weights, tflownet=self.tflownet, rmnet=self.rmnet)
        self.tflownet.to(self.device).eval()
        self.rmnet.to(self.device).eval()
        test = self.cfg.TEST
        self.n_channels = int(test.N_MAX_OBJECTS) + 1
        self.memorize_every = int(test.MEMORIZE_EVERY)
        self.regional_read = bool(test.REGIONAL_READ)
        self.variants = [Variant(float(s), flip) for s in test.FRAME_SCALES
                         for flip in ((False, True) if test.FLIP_LR else (False,))]
        self.precision = test.PRECISION
        if self.precision not in ('fp32', 'tf32', 'bf16'):
            raise SegmentationError(f'TEST.PRECISION must be fp32, tf32 or bf16, got {self.precision!r}')
        mean = torch.tensor(self.cfg.CONST.DATASET_MEAN, dtype=torch.float32, device=self.device)
        std = torch.tensor(self.cfg.CONST.DATASET_STD, dtype=torch.float32, device=self.device)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self.later_masks: Dict[int, np.ndarray] = {}

    def add_object(self, frame_index: int, mask: np.ndarray) -> None:
        """Objects that first appear at `frame_index` (> 0): an (H, W) id mask (or boolean for one
        object). Ids must differ from those of the first mask. Register them before calling
        segment() to reproduce the published results exactly (the published loop knows every
        object from the start); an object added while segmenting gets no memory of the frames
        already passed."""
        if frame_index < 1:
            raise SegmentationError('add_object is for frames after the first; pass frame 0 objects '
                                    'in the first mask')
        mask = np.asarray(mask)
        if mask.dtype == bool:
            mask = mask.astype(np.uint8)
        if frame_index in self.later_masks:
            merged = self.later_masks[frame_index].copy()
            merged[mask > 0] = mask[mask > 0]
            mask = merged
        self.later_masks[frame_index] = mask

    @torch.no_grad()
    def segment(self, frames: Iterable[np.ndarray], first_mask: np.ndarray) -> Iterator[np.ndarray]:
        """Yield an (H, W) uint8 id mask for every frame (frame 0 gives back the first mask)."""
        for probs, ids in self._propagate(frames, first_mask):
            yield ids[probs.argmax(dim=0)].to(torch.uint8).cpu().numpy()

    @torch.no_grad()
    def segment_probabilities(self, frames: Iterable[np.ndarray],
                              first_mask: np.ndarray) -> Iterator[torch.Tensor]:
        """Yield (K, H, W) probabilities per frame; channel k is the k-th id in sorted order."""
        for probs, _ in self._propagate(frames, first_mask):
            yield probs

    def _object_ids(self, first_mask: np.ndarray) -> List[int]:
        ids = set(np.unique(first_mask).tolist())
        for frame_index, mask in self.later_masks.items():
            ids |= set(np.unique(mask).tolist())
        ids -= {0, int(self.cfg.CONST.IGNORE_IDX)}
        if not ids:
            raise SegmentationError('the first mask has no object (every pixel is 0 or void)')
        if len(ids) > self.n_channels - 1:
            raise SegmentationError(f'{len(ids)} objects, but TEST.N_MAX_OBJECTS is {self.n_channels - 1}; '
                                    f'raise it with --set TEST.N_MAX_OBJECTS {len(ids)}')
        return sorted(ids)

    def _one_hot(self, mask: np.ndarray, lookup: torch.Tensor, size) -> torch.Tensor:
        if mask.shape != tuple(size):
            raise SegmentationError(f'mask size {mask.shape[1]}x{mask.shape[0]} differs from the '
                                    f'frame size {size[1]}x{size[0]}')
        channels = lookup[torch.from_numpy(mask.astype(np.int64)).to(self.device)]
        return F.one_hot(channels, self.n_channels).permute(2, 0, 1)[None].float()

    def _normalise(self, frame: np.ndarray) -> torch.Tensor:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise SegmentationError(f'frames must be HxWx3 uint8 RGB arrays, got {frame.dtype} {frame.shape}')
        x = torch.from_numpy(frame).to(self.device, non_blocking=True)
        x = x.permute(2, 0, 1)[None].float() / 255.0
        return (x - self.mean) / self.std

    def _precision_context(self):
        if self.device.type != 'cuda':
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        tf32 = self.precision == 'tf32'
        stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                                       allow_tf32=tf32))
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        stack.callback(setattr, torch.backends.cuda.matmul, 'allow_tf32', previous)
        if self.precision == 'bf16':
            stack.enter_context(torch.autocast('cuda', dtype=torch.bfloat16))
        return stack

    def _propagate(self, frames: Iterable[np.ndarray], first_mask: np.ndarray):
        first_mask = np.asarray(first_mask)
        ids = self._object_ids(first_mask)
        lookup = torch.zeros(256, dtype=torch.long, device=self.device)
        lookup[torch.tensor(ids, device=self.device)] = torch.arange(1, len(ids) + 1, device=self.device)
        channel_ids = torch.zeros(self.n_channels, dtype=torch.long, device=self.device)
        channel_ids[1:len(ids) + 1] = torch.tensor(ids, device=self.device)
        cores = [InferenceCore(self.rmnet, [len(ids)], self.memorize_every, self.regional_read)
                 for _ in self.variants]
        previous = None
        with self._precision_context():
            for t, frame in enumerate(frames):
                x = self._normalise(frame)
                size = x.shape[-2:]
                if t == 0:
                    masks = self._one_hot(first_mask, lookup, size)
                    for core, variant in zip(cores, self.variants):
                        core.start(self._scale(x, variant), self._scale_mask(masks, variant))
                    probs = masks[0]
                else:
                    flow = self.tflownet.step(x, previous).float()
                    new_masks = (self._one_hot(self.later_masks[t], lookup, size)
                                 if t in self.later_masks else None)
                    outputs = []
                    for core, variant in zip(cores, self.variants):
                        new_variant = None if new_masks is None else self._scale_mask(new_masks, variant)
                        out = core.step(self._scale(x, variant), self._scale_flow(flow, variant), new_variant)
                        outputs.append(self._unscale(out.float(), variant, size))
                    probs = torch.stack(outputs).mean(dim=0)[0]
                previous = x
                yield probs, channel_ids

    @staticmethod
    def _scale(x: torch.Tensor, variant: Variant) -> torch.Tensor:
        if variant.scale != 1.0:
            x = F.interpolate(x, scale_factor=variant.scale, mode='bilinear', align_corners=False)
        return torch.flip(x, dims=[3]) if variant.flip else x

    @staticmethod
    def _scale_mask(masks: torch.Tensor, variant: Variant) -> torch.Tensor:
        if variant.scale != 1.0:
            masks = F.interpolate(masks, scale_factor=variant.scale, mode='nearest')
        return torch.flip(masks, dims=[3]) if variant.flip else masks

    @staticmethod
    def _scale_flow(flow: torch.Tensor, variant: Variant) -> torch.Tensor:
        if variant.scale != 1.0:
            flow = F.interpolate(flow, scale_factor=variant.scale, mode='nearest') * variant.scale
        if variant.flip:
            flow = torch.flip(flow, dims=[3])
            flow = torch.cat([-flow[:, :1], flow[:, 1:]], dim=1)
        return flow

    @staticmethod
    def _unscale(probs: torch.Tensor, variant: Variant, size) -> torch.Tensor:
        if variant.flip:
            probs = torch.flip(probs, dims=[3])
        if tuple(probs.shape[-2:]) != tuple(size):
            probs = F.interpolate(probs, size=tuple(size), mode='bilinear', align_corners=False)
        return probs
