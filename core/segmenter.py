"""VideoSegmenter: stream frames in, get masks out (TinyFlowNet + RMNet, test-time augmentation).

    seg = VideoSegmenter('RMNet-DAVIS.pth', device='cuda')
    seg.add_object(30, mask_of_a_late_object)        # optional: objects that enter later
    for mask in seg.segment(frames, first_mask):      # frames: any iterable of HxWx3 uint8 RGB
        ...                                           # mask: HxW uint8 with the given object ids

Each variant of test-time augmentation (every scale of TEST.FRAME_SCALES, and its mirror with
TEST.FLIP_LR) runs its own frame loop; their probabilities are resized back and averaged, as
the published multi-scale test does. The flow of frame t is computed from frames t and t-1
inside the loop and resized for each variant.

On a GPU with TEST.REGIONAL_READ (the default) the fast path runs: a preallocated memory on
the GPU, the regional read kernel, every per-frame step replayed as a CUDA graph, frames
uploaded and masks downloaded asynchronously through pinned buffers (each mask is yielded
one frame later, when its copy has landed). TEST.PRECISION = 'bf16' adds bf16 autocast and
channels-last convolutions. TEST.REGIONAL_READ = False runs the published dense read.
"""
import contextlib
import copy
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from config import cfg as default_cfg
from core.inference_core import InferenceCore
from models.folding import fold_batch_norms
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import load_networks
from utils.cli import UserError
from utils.cuda_graph import GraphedStep

logger = logging.getLogger(__name__)
PRECISIONS = ('fp32', 'bf16')


class SegmentationError(UserError, ValueError):
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


def network_size(height: int, width: int, short_side: Optional[int]) -> Tuple[int, int]:
    """The (height, width) the networks see: the short side scaled to `short_side`."""
    if not short_side or min(height, width) == short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class _FrameInput:
    """Frames to the GPU through alternating pinned buffers, normalised, and the flow of each
    frame from TinyFlowNet (a CUDA graph on the fast path)."""

    def __init__(self, segmenter: 'VideoSegmenter', size: Tuple[int, int], fast: bool):
        self.segmenter = segmenter
        self.size = size
        self.fast = fast
        self.device = segmenter.device
        self.pinned: List[torch.Tensor] = []
        self.events: List[Optional[torch.cuda.Event]] = []
        self.raw: Optional[torch.Tensor] = None
        self.previous: Optional[torch.Tensor] = None
        self.graphed = GraphedStep(self._flow_step, enabled=fast)

    def upload(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise SegmentationError(f'frames must be HxWx3 uint8 RGB arrays, got {frame.dtype} {frame.shape}')
        if self.raw is not None and tuple(frame.shape) != tuple(self.raw.shape):
            raise SegmentationError(f'frame size {frame.shape[1]}x{frame.shape[0]} differs from the first '
                                    f'frame ({self.raw.shape[1]}x{self.raw.shape[0]})')
        if self.device.type != 'cuda':
            self.raw = torch.from_numpy(frame)
            return
        if not self.pinned:
            self.pinned = [torch.empty(frame.shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
            self.events = [None, None]
            self.raw = torch.empty(frame.shape, dtype=torch.uint8, device=self.device)
            self.turn = 0
        self.turn ^= 1
        if self.events[self.turn] is not None:
            self.events[self.turn].synchronize()
        self.pinned[self.turn].numpy()[...] = frame
        self.raw.copy_(self.pinned[self.turn], non_blocking=True)
        self.events[self.turn] = torch.cuda.Event()
        self.events[self.turn].record()

    def normalised(self) -> torch.Tensor:
        seg = self.segmenter
        x = self.raw.to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode='bilinear', align_corners=False, antialias=True)
        return (x - seg.mean) / seg.std

    def _flow_step(self) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.normalised()
        flow = self.segmenter.tflownet.step(x, self.previous).float()
        self.previous.copy_(x)
        return x, flow

    def first(self) -> torch.Tensor:
        x = self.normalised()
        self.previous = x.clone()
        return x

    def next(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The normalised frame and its flow; on the fast path they are overwritten next time."""
        return self.graphed()


class VideoSegmenter:
    """Semi-supervised video object segmentation of one video at a time."""

    def __init__(self, weights: Optional[str] = None, device: Union[str, torch.device, None] = None,
                 cfg: Optional[dict] = None, tflownet: Optional[TinyFlowNet] = None,
                 rmnet: Optional[RMNet] = None, short_side: Optional[int] = None):
        self.cfg = cfg or default_cfg
        self.device = pick_device(device)
        self.short_side = short_side
        self.tflownet = tflownet or TinyFlowNet(self.cfg)
        self.rmnet = rmnet or RMNet(self.cfg)
        if weights is not None:
            load_networks(weights, tflownet=self.tflownet, rmnet=self.rmnet)
        test = self.cfg.TEST
        self.precision = test.PRECISION
        if self.precision not in PRECISIONS:
            raise SegmentationError(f'TEST.PRECISION must be one of {PRECISIONS}, got {self.precision!r}')
        self.tflownet.to(self.device).eval()
        self.rmnet.to(self.device).eval()
        self.memorize_every = int(test.MEMORIZE_EVERY)
        self.regional_read = bool(test.REGIONAL_READ)
        self.fast = self.regional_read and self.device.type == 'cuda'
        self.max_objects = int(test.N_MAX_OBJECTS)
        if self.precision == 'bf16' and self.device.type == 'cuda':
            # networks prepared by an earlier segmenter (already bf16) are shared, not copied
            if next(self.rmnet.parameters()).dtype != torch.bfloat16:
                self.rmnet = fold_batch_norms(self.rmnet).to(torch.bfloat16)
            if next(self.tflownet.parameters()).dtype != torch.bfloat16:
                self.tflownet = copy.deepcopy(self.tflownet).to(torch.bfloat16)
            self.tflownet.to(memory_format=torch.channels_last)
            self.rmnet.to(memory_format=torch.channels_last)
        self.variants = [Variant(float(s), flip) for s in test.FRAME_SCALES
                         for flip in ((False, True) if test.FLIP_LR else (False,))]
        mean = torch.tensor(self.cfg.CONST.DATASET_MEAN, dtype=torch.float32, device=self.device)
        std = torch.tensor(self.cfg.CONST.DATASET_STD, dtype=torch.float32, device=self.device)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self.later_masks: Dict[int, np.ndarray] = {}
        self.later_objects: List[Tuple[int, np.ndarray, Optional[int]]] = []

    def add_object(self, frame_index: int, mask: np.ndarray, object_id: Optional[int] = None) -> None:
        """An object that first appears at `frame_index` (> 0): an (H, W) id mask, or a boolean
        mask with its `object_id` (default: one above every id known when segmenting starts).
        Register objects before calling segment() to reproduce the published results exactly
        (the published loop knows every object from the start); an object added while
        segmenting is not in the memory of the frames already passed."""
        if frame_index < 1:
            raise SegmentationError('add_object is for frames after the first; pass frame 0 objects '
                                    'in the first mask')
        mask = np.asarray(mask)
        if mask.dtype == bool:
            self.later_objects.append((frame_index, mask, object_id))
            return
        if frame_index in self.later_masks:
            merged = self.later_masks[frame_index].copy()
            merged[mask > 0] = mask[mask > 0]
            mask = merged
        self.later_masks[frame_index] = mask

    def _resolve_boolean_objects(self, first_mask: np.ndarray) -> None:
        known = set(np.unique(first_mask).tolist())
        for mask in self.later_masks.values():
            known |= set(np.unique(mask).tolist())
        known -= {int(self.cfg.CONST.IGNORE_IDX)}
        for frame_index, mask, object_id in self.later_objects:
            object_id = object_id or max(known) + 1
            known.add(object_id)
            ids = np.where(mask, object_id, 0).astype(np.uint8)
            if frame_index in self.later_masks:
                ids = np.where(mask, object_id, self.later_masks[frame_index]).astype(np.uint8)
            self.later_masks[frame_index] = ids
        self.later_objects = []

    @torch.no_grad()
    def segment(self, frames: Iterable[np.ndarray], first_mask: np.ndarray) -> Iterator[np.ndarray]:
        """Yield an (H, W) uint8 id mask for every frame (frame 0 gives back the first mask)."""
        pending: Optional[Tuple[torch.Tensor, Optional[torch.cuda.Event]]] = None
        buffers: List[torch.Tensor] = []
        for t, (probs, channel_ids) in enumerate(self._propagate(frames, first_mask)):
            ids = channel_ids[probs.argmax(dim=0)].to(torch.uint8)
            if self.device.type != 'cuda':
                yield ids.numpy()
                continue
            if not buffers:
                buffers = [torch.empty(ids.shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
            host = buffers[t % 2]
            host.copy_(ids, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            if pending is not None:
                pending[1].synchronize()
                yield pending[0].numpy().copy()
            pending = (host, event)
        if pending is not None:
            pending[1].synchronize()
            yield pending[0].numpy().copy()

    @torch.no_grad()
    def segment_probabilities(self, frames: Iterable[np.ndarray],
                              first_mask: np.ndarray) -> Iterator[torch.Tensor]:
        """Yield (K, H, W) probabilities per frame; channel k is the k-th id in sorted order."""
        for probs, _ in self._propagate(frames, first_mask):
            yield probs.clone()

    def _object_ids(self, first_mask: np.ndarray) -> List[int]:
        ids = set(np.unique(first_mask).tolist())
        for mask in self.later_masks.values():
            ids |= set(np.unique(mask).tolist())
        ids -= {0, int(self.cfg.CONST.IGNORE_IDX)}
        if not ids:
            raise SegmentationError('the first mask has no object (every pixel is 0 or void)')
        if len(ids) > self.max_objects:
            raise SegmentationError(f'{len(ids)} objects, but TEST.N_MAX_OBJECTS is {self.max_objects}; '
                                    f'raise it with --set TEST.N_MAX_OBJECTS {len(ids)}')
        return sorted(ids)

    def _one_hot(self, mask: np.ndarray, lookup: torch.Tensor, frame_size, net_size) -> torch.Tensor:
        if mask.shape != tuple(frame_size):
            raise SegmentationError(f'mask size {mask.shape[1]}x{mask.shape[0]} differs from the '
                                    f'frame size {frame_size[1]}x{frame_size[0]}')
        channels = lookup[torch.from_numpy(mask.astype(np.int64)).to(self.device)]
        one_hot = F.one_hot(channels, self.n_channels).permute(2, 0, 1)[None].float()
        if tuple(net_size) != tuple(frame_size):
            one_hot = F.interpolate(one_hot, size=tuple(net_size), mode='nearest')
        return one_hot

    def _precision_context(self):
        stack = contextlib.ExitStack()
        if self.precision == 'bf16' and self.device.type == 'cuda':
            stack.enter_context(torch.autocast('cuda', dtype=torch.bfloat16, cache_enabled=False))
        return stack

    def _propagate(self, frames: Iterable[np.ndarray], first_mask: np.ndarray):
        first_mask = np.asarray(first_mask)
        self._resolve_boolean_objects(first_mask)
        ids = self._object_ids(first_mask)
        # the published loop carries N_MAX_OBJECTS + 1 channels; the fast path only the video's
        # objects (the absent channels change the softmax by about 1e-7)
        self.n_channels = len(ids) + 1 if self.fast else self.max_objects + 1
        lookup = torch.zeros(256, dtype=torch.long, device=self.device)
        lookup[torch.tensor(ids, device=self.device)] = torch.arange(1, len(ids) + 1, device=self.device)
        channel_ids = torch.zeros(self.n_channels, dtype=torch.long, device=self.device)
        channel_ids[1:len(ids) + 1] = torch.tensor(ids, device=self.device)
        expected = len(frames) if isinstance(frames, Sequence) or hasattr(frames, '__len__') else None
        cores = [InferenceCore(self.rmnet, [len(ids)], self.memorize_every, self.regional_read,
                               fast=self.fast, expected_frames=expected) for _ in self.variants]
        frame_input = None
        with self._precision_context():
            for t, frame in enumerate(frames):
                if frame_input is None:
                    frame_size = np.asarray(frame).shape[:2]
                    net_size = network_size(*frame_size, self.short_side)
                    frame_input = _FrameInput(self, net_size, self.fast)
                frame_input.upload(frame)
                if t == 0:
                    x = self._channels_last(frame_input.first())
                    masks = self._one_hot(first_mask, lookup, frame_size, net_size)
                    for core, variant in zip(cores, self.variants):
                        core.start(self._scale(x, variant), self._scale_mask(masks, variant))
                    probs = self._to_frame_size(masks, frame_size)[0]
                else:
                    x, flow = frame_input.next()
                    x = self._channels_last(x)
                    new_masks = (self._one_hot(self.later_masks[t], lookup, frame_size, net_size)
                                 if t in self.later_masks else None)
                    outputs = []
                    for core, variant in zip(cores, self.variants):
                        new_variant = None if new_masks is None else self._scale_mask(new_masks, variant)
                        out = core.step(self._scale(x, variant), self._scale_flow(flow, variant), new_variant)
                        outputs.append(self._unscale(out.float(), variant, net_size))
                    probs = outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(dim=0)
                    probs = self._to_frame_size(probs, frame_size)[0]
                yield probs, channel_ids

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == 'bf16' and self.device.type == 'cuda':
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @staticmethod
    def _to_frame_size(probs: torch.Tensor, frame_size) -> torch.Tensor:
        if tuple(probs.shape[-2:]) != tuple(frame_size):
            probs = F.interpolate(probs, size=tuple(frame_size), mode='bilinear', align_corners=False)
        return probs

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
