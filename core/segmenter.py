"""VideoSegmenter: stream frames in, get masks out (TinyFlowNet + RMNet, test-time augmentation).

    seg = VideoSegmenter('RMNet-DAVIS.pth', 'cuda', cfg)
    seg.add_object(30, mask_of_a_late_object, object_id=3)   # optional: objects that enter later
    for mask in seg.segment(frames, first_mask):      # frames: any iterable of HxWx3 uint8 RGB
        ...                                           # mask: HxW uint8 with the given object ids

Every frame goes through the frame recurrence (models.recurrence) of each variant of
test-time augmentation (core.augmentation: every scale of TEST.FRAME_SCALES with its own
TinyFlowNet step, and its mirror with TEST.FLIP_LR); their probabilities are averaged as the
published multi-scale test does. Object ids and channels: models.object_manager.

On a GPU with TEST.REGIONAL_READ (the default) the fast path runs: a preallocated memory on
the GPU, the regional read kernel, every variant's per-frame step replayed as its own CUDA
graph, frames uploaded and masks downloaded asynchronously through pinned buffers (each mask
is yielded one frame later, when its copy has landed). The buffers and graphs of each object
count and size are kept for later videos (TEST.KEPT_CAPTURES, core.prepared_branches), and the
GPU libraries start with the segmenter. The eager first steps and the captures run in one
thread of the process (utils.cuda_graph.CaptureThread), which `warm_up` prepares for a video
to come (its cuDNN plans and kernels) while the current one replays. TEST.PRECISION = 'bf16' adds bf16
autocast and channels-last convolutions. TEST.REGIONAL_READ = False runs the published
dense read.
"""
import contextlib
import copy
import logging
import threading
from typing import Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from core.augmentation import ScaleBranch
from core.prepared_branches import PreparedBranches
from models.folding import fold_batch_norms
from models.object_manager import ObjectManager, SegmentationError
from models.recurrence import FrameRecurrence
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import load_networks
from utils.configuration import check_test_options
from utils.cuda_graph import SharedGraphPool, shared_capture_thread

__all__ = ['SegmentationError', 'VideoSegmenter', 'network_size', 'pick_device']

logger = logging.getLogger(__name__)
PRECISIONS = ('fp32', 'bf16')
# the tiny video that starts the GPU libraries: its 3x5 feature positions, like most frame
# sizes', are neither 1 nor a multiple of 16, the cases the Triton read is compiled apart for
WARM_UP_SIZE = (48, 80)


def pick_device(device: Union[str, torch.device, None]) -> torch.device:
    """The device asked for (None: the GPU if there is one); a GPU with its index, the current
    device's when none is given, so that work handed to other threads lands on it too."""
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return device


def frame_statistics(cfg, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """CONST.DATASET_MEAN and DATASET_STD, the frames' normalisation, as (3,) float32 tensors."""
    return (torch.tensor(cfg.CONST.DATASET_MEAN, dtype=torch.float32, device=device),
            torch.tensor(cfg.CONST.DATASET_STD, dtype=torch.float32, device=device))


def network_size(height: int, width: int, short_side: Optional[int]) -> Tuple[int, int]:
    """The (height, width) the networks see: the short side scaled to `short_side`."""
    if not short_side or min(height, width) == short_side:
        return height, width
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shapes_key(n_objects: int, net_size: Tuple[int, int]) -> Tuple[int, Tuple[int, int]]:
    return int(n_objects), (int(net_size[0]), int(net_size[1]))


class _FrameInput:
    """Frames to the device (on a GPU through alternating pinned buffers, kept from one video
    to the next of the same frame size), normalised at the network size."""

    def __init__(self, device: torch.device, mean: torch.Tensor, std: torch.Tensor):
        self.device = device
        self.mean, self.std = mean, std
        self.shape: Optional[Tuple[int, ...]] = None
        self.size: Optional[Tuple[int, int]] = None
        self.pinned: List[torch.Tensor] = []
        self.events: List[Optional[torch.cuda.Event]] = []
        self.raw: Optional[torch.Tensor] = None

    def start(self, frame_shape: Tuple[int, ...], size: Tuple[int, int]) -> None:
        """A new video whose frames have `frame_shape`, seen by the networks at `size`."""
        if tuple(frame_shape) != self.shape:
            self.pinned, self.events, self.raw = [], [], None
        self.shape, self.size = tuple(frame_shape), tuple(size)

    def upload(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise SegmentationError(f'frames must be HxWx3 uint8 RGB arrays, got {frame.dtype} {frame.shape}')
        if tuple(frame.shape) != self.shape:
            raise SegmentationError(f'frame size {frame.shape[1]}x{frame.shape[0]} differs from the first '
                                    f'frame ({self.shape[1]}x{self.shape[0]})')
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
        x = self.raw.to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode='bilinear', align_corners=False, antialias=True)
        return (x - self.mean) / self.std


class VideoSegmenter:
    """Semi-supervised video object segmentation, one video after another.

    cfg: the configuration (TEST.*, CONST.*, NETWORK.*); it is read, never changed.
    The networks (given, or built from cfg and loaded from `weights`) are moved to `device`
    and put in eval mode in place, so that segmenters can share them; with TEST.PRECISION
    'bf16' on a GPU the segmenter works on prepared copies (BatchNorm folded, bf16,
    channels-last), and networks that are already bf16 are used as they are. first_video: the
    object count and (H, W) frame size of the first video, when known: the GPU libraries then
    start with its shapes, so that its first frame only runs and captures its step.
    """

    def __init__(self, weights: Optional[str], device: Union[str, torch.device, None], cfg,
                 tflownet: Optional[TinyFlowNet] = None, rmnet: Optional[RMNet] = None,
                 short_side: Optional[int] = None, first_video: Optional[Tuple[int, Tuple[int, int]]] = None):
        check_test_options(cfg)            # before the GPU libraries start (the CLI checked them too)
        self.cfg = cfg
        self.device = pick_device(device)
        self.short_side = short_side
        self.tflownet = tflownet or TinyFlowNet(cfg)
        self.rmnet = rmnet or RMNet(cfg)
        if weights is not None:
            load_networks(weights, tflownet=self.tflownet, rmnet=self.rmnet)
        test = cfg.TEST
        self.precision = test.PRECISION
        if self.precision not in PRECISIONS:
            raise SegmentationError(f'TEST.PRECISION must be one of {PRECISIONS}, got {self.precision!r}')
        self.tflownet.to(self.device).eval()
        self.rmnet.to(self.device).eval()
        if self.device.type == 'cuda':
            self.rmnet.load_ops()
        self.memorize_every = int(test.MEMORIZE_EVERY)
        self.max_memory_frames = int(test.MAX_MEMORY_FRAMES)
        self.regional_read = bool(test.REGIONAL_READ)
        self.fast = self.regional_read and self.device.type == 'cuda'
        self.bf16 = self.precision == 'bf16' and self.device.type == 'cuda'
        if self.bf16:
            if next(self.rmnet.parameters()).dtype != torch.bfloat16:
                self.rmnet = fold_batch_norms(self.rmnet).to(torch.bfloat16)
            if next(self.tflownet.parameters()).dtype != torch.bfloat16:
                self.tflownet = copy.deepcopy(self.tflownet).to(torch.bfloat16)
            self.tflownet.to(memory_format=torch.channels_last)
            self.rmnet.to(memory_format=torch.channels_last)
        self.scales = [float(s) for s in test.FRAME_SCALES]
        self.flip = bool(test.FLIP_LR)
        mean, std = frame_statistics(cfg, self.device)
        self.mean, self.std = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
        self.pending: List[Tuple[int, np.ndarray, Optional[int]]] = []
        self.active: Optional[object] = None          # the token of the video being segmented
        self.frame_input = _FrameInput(self.device, self.mean, self.std)
        self.mask_buffers: List[torch.Tensor] = []      # pinned, for the downloads of the id masks
        self.capture_thread = shared_capture_thread() if self.fast else None
        self.warmed = set()                            # (objects, network size) pairs the thread ran
        self.warmed_lock = threading.Lock()
        if self.fast:        # part of loading the model: cuDNN, cuBLAS and the Triton read start
            n_objects, net_size = 1, WARM_UP_SIZE
            if first_video is not None and first_video[0] > 0:   # with the first video's own shapes
                n_objects, net_size = self._layout(*first_video)
                self.warmed.add((n_objects, net_size))
            self.capture_thread.run(lambda: self._warm_up(n_objects, net_size), self.device)
        # the branches of earlier (object count, size) pairs, kept with their graphs on the fast path
        self.prepared = PreparedBranches(int(test.KEPT_CAPTURES) if self.fast else 1)
        self.graph_pool = SharedGraphPool(self.device) if self.fast else None
        self.branches: List[ScaleBranch] = []          # those of the video being segmented

    def warm_up(self, n_objects: int, frame_size: Tuple[int, int]) -> None:
        """Prepare for a video to come with `n_objects` objects and (H, W) frames: on the fast
        path, one throwaway step of its shapes runs in the capture thread (cuDNN plans, kernel
        loading), so that its first frame only runs and captures its step. Returns at once;
        the video's first step waits for it. A failed warm-up is logged; that video's first
        step then meets the error itself, if there is one."""
        if not self.fast or n_objects < 1:
            return
        key = self._layout(n_objects, frame_size)
        with self.warmed_lock:
            if key in self.warmed:
                return
            self.warmed.add(key)
        self.capture_thread.submit(lambda: self._warm_up_logged(*key), self.device)   # from any thread

    def _layout(self, n_objects: int, frame_size: Tuple[int, int]) -> Tuple[int, Tuple[int, int]]:
        """(objects, network size) of a video of (H, W) frames: what its steps' shapes depend on."""
        return _shapes_key(n_objects, network_size(*frame_size, self.short_side))

    def _warm_up_logged(self, n_objects: int, net_size: Tuple[int, int]) -> None:
        try:
            self._warm_up(n_objects, net_size)
        except Exception as e:  # the video's own first step reports what matters
            logger.warning('warming up for a video of %d objects at %dx%d failed (%s); its first frame '
                           'prepares it instead', n_objects, net_size[1], net_size[0], e)

    @torch.no_grad()
    def _warm_up(self, n_objects: int, net_size: Tuple[int, int]) -> None:
        """One eager step of a throwaway video of `n_objects` objects at the network size,
        through every variant of test-time augmentation, in the calling thread (the capture
        thread): its cuDNN plans are built and its kernels loaded (the Triton read compiled
        once per machine, then cached on disk). Its memory is freed at the end."""
        height, width = net_size
        frame = self._channels_last(torch.zeros(1, 3, height, width, device=self.device))
        ids = np.zeros((height, width), dtype=np.uint8)
        stripe = max(1, width // (2 * n_objects))
        for k in range(n_objects):              # side by side in the middle of the frame
            ids[height // 4:height - height // 4, width // 4 + k * stripe:width // 4 + (k + 1) * stripe] = k + 1
        lookup = torch.arange(n_objects + 1, device=self.device)
        masks = self._one_hot(ids, lookup, n_objects + 1, net_size, net_size)   # laid out as a video's

        def recurrence(flow_net: Optional[TinyFlowNet]) -> FrameRecurrence:
            return FrameRecurrence(self.rmnet, [n_objects], memorize_every=1, regional_read=True,
                                   flow_net=flow_net)

        with self._precision_context():
            for scale in self.scales:
                branch = ScaleBranch(scale, recurrence(self.tflownet), recurrence(None) if self.flip else None,
                                     tuple(net_size))
                branch.start(frame, masks)
                branch.step(frame, None)
        torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """Free the GPU memory of every kept capture now; later videos prepare theirs again.
        A video still being segmented stops at its next frame (its buffers are gone)."""
        self.active = None
        self.prepared.clear()
        self.branches = []

    @property
    def segmenting(self) -> bool:
        return self.active is not None

    def add_object(self, frame_index: int, mask: np.ndarray, object_id: Optional[int] = None) -> None:
        """An object that first appears at `frame_index` (> 0) of the next video segmented: a
        binary mask (bool, 0/1 or 0/255) with its `object_id` (a bool mask without it takes one
        above every id known), or an (H, W) id mask whose new ids are added. Objects must be
        added before segment() starts; segment() raises SegmentationError for a mask that adds
        nothing (see models.object_manager.ObjectManager.add)."""
        if self.segmenting:
            raise SegmentationError('add_object is called before segment(): the published loop knows '
                                    'every object of a video from its start')
        if frame_index < 1:
            raise SegmentationError('add_object is for frames after the first; pass frame 0 objects '
                                    'in the first mask')
        self.pending.append((int(frame_index), np.asarray(mask), object_id))

    def objects_of(self, first_mask: Union[np.ndarray, ObjectManager]) -> ObjectManager:
        """The object manager of a video: `first_mask` (or the given manager) with the objects
        added by add_object since the last video."""
        objects = (first_mask if isinstance(first_mask, ObjectManager)
                   else ObjectManager.from_cfg(np.asarray(first_mask), self.cfg))
        pending, self.pending = self.pending, []
        for frame_index, mask, object_id in pending:
            objects.add(frame_index, mask, object_id)
        return objects

    @torch.no_grad()
    def segment(self, frames: Iterable[np.ndarray],
                first_mask: Union[np.ndarray, ObjectManager]) -> Iterator[np.ndarray]:
        """Yield an (H, W) uint8 id mask for every frame. first_mask: the (H, W) ids of frame 0,
        or an ObjectManager that also holds the objects appearing later."""
        pending: Optional[Tuple[torch.Tensor, Optional[torch.cuda.Event]]] = None
        for t, (probs, channel_ids) in enumerate(self._propagate(frames, first_mask)):
            ids = channel_ids[probs.argmax(dim=0)]
            if self.device.type != 'cuda':
                yield ids.numpy()
                continue
            if t == 0 and (not self.mask_buffers or self.mask_buffers[0].shape != ids.shape):
                self.mask_buffers = [torch.empty(ids.shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
            host = self.mask_buffers[t % 2]
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
                              first_mask: Union[np.ndarray, ObjectManager]) -> Iterator[torch.Tensor]:
        """Yield (K, H, W) probabilities per frame; channel k is the k-th id in sorted order."""
        for probs, _ in self._propagate(frames, first_mask):
            yield probs.clone()

    def _one_hot(self, mask: np.ndarray, lookup: torch.Tensor, n_channels: int,
                 frame_size: Tuple[int, int], net_size: Tuple[int, int]) -> torch.Tensor:
        if mask.shape != tuple(frame_size):
            raise SegmentationError(f'mask size {mask.shape[1]}x{mask.shape[0]} differs from the '
                                    f'frame size {frame_size[1]}x{frame_size[0]}')
        channels = lookup[torch.from_numpy(np.ascontiguousarray(mask)).to(self.device).long()]
        one_hot = F.one_hot(channels, n_channels).permute(2, 0, 1)[None].float()
        if tuple(net_size) != tuple(frame_size):
            one_hot = F.interpolate(one_hot, size=tuple(net_size), mode='nearest')
        return one_hot

    def _precision_context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.bf16:
            stack.enter_context(torch.autocast('cuda', dtype=torch.bfloat16, cache_enabled=False))
        return stack

    def _branches(self, n_objects: int, n_channels: int, expected_frames: Optional[int],
                  net_size: Tuple[int, int]) -> List[ScaleBranch]:
        """The branches of test-time augmentation; those prepared for an earlier video of the
        same objects and size when they are kept (on the fast path their buffers and graphs
        are reused). All captures of a segmenter share one memory pool: they never run at
        the same time, and what a replay leaves for later lives outside the pool."""
        def recurrence(flow_net: Optional[TinyFlowNet]) -> FrameRecurrence:
            return FrameRecurrence(self.rmnet, [n_objects], self.memorize_every, self.regional_read,
                                   fast=self.fast, expected_frames=expected_frames, flow_net=flow_net,
                                   max_memory_frames=self.max_memory_frames,
                                   graph_pool=self.graph_pool.handle if self.fast else None,
                                   capture_thread=self.capture_thread)

        def build() -> List[ScaleBranch]:
            return [ScaleBranch(scale, recurrence(self.tflownet), recurrence(None) if self.flip else None,
                                net_size) for scale in self.scales]

        with self.warmed_lock:            # its first step builds the plans in the capture thread
            self.warmed.add(_shapes_key(n_objects, net_size))
        branches = self.prepared.get((n_objects, n_channels, tuple(net_size)), build)
        for branch in branches:
            branch.expect(expected_frames)
        self.branches = branches
        return branches

    def _propagate(self, frames: Iterable[np.ndarray], first_mask: Union[np.ndarray, ObjectManager]):
        objects = self.objects_of(first_mask)
        # the published loop carries N_MAX_OBJECTS + 1 channels; the fast path only the video's
        # objects (the absent channels change the softmax by about 1e-7)
        n_channels = len(objects) + 1 if self.fast else objects.max_objects + 1
        lookup = torch.from_numpy(objects.channel_lookup()).to(self.device)
        channel_ids = torch.from_numpy(objects.channel_ids(n_channels)).to(self.device)
        expected = len(frames) if hasattr(frames, '__len__') else None
        frame_input, branches = self.frame_input, []
        token = self.active = object()         # an unfinished earlier video stops at its next frame
        try:
            with self._precision_context():
                for t, frame in enumerate(frames):
                    self._check_owner(token)
                    if t == 0:
                        frame_size = np.asarray(frame).shape[:2]
                        net_size = network_size(*frame_size, self.short_side)
                        frame_input.start(np.asarray(frame).shape, net_size)
                        branches = self._branches(len(objects), n_channels, expected, net_size)
                    frame_input.upload(frame)
                    x = self._channels_last(frame_input.normalised())
                    mask = objects.first_mask if t == 0 else objects.given.get(t)
                    masks = None if mask is None else self._one_hot(mask, lookup, n_channels, frame_size, net_size)
                    outputs = [out for branch in branches
                               for out in (branch.start(x, masks) if t == 0 else branch.step(x, masks))]
                    probs = outputs[0] if len(outputs) == 1 else torch.stack(outputs).mean(dim=0)
                    yield self._to_frame_size(probs, frame_size)[0], channel_ids
            self._check_owner(token)     # the last mask's download buffer may be the new video's now
            self.prepared.trim()
        finally:
            if self.active is token:
                self.active = None

    def _check_owner(self, token: object) -> None:
        if self.active is not token:
            raise SegmentationError('another segment() call took over this segmenter (or release() freed '
                                    'it) before this video '
                                    'was done (its buffers and CUDA graphs serve one video at a time): '
                                    'finish one video before starting the next, or use one '
                                    'VideoSegmenter per video')

    def _channels_last(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.bf16 else x

    @staticmethod
    def _to_frame_size(probs: torch.Tensor, frame_size) -> torch.Tensor:
        if tuple(probs.shape[-2:]) != tuple(frame_size):
            probs = F.interpolate(probs.float(), size=tuple(frame_size), mode='bilinear', align_corners=False)
        return probs
