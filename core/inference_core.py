"""What happens at frame t: the published RMNet frame loop, one frame at a time.

    1. memorize frame t-1 with its estimate (kept if t-1 is a multiple of MEMORIZE_EVERY or
       objects appeared in it; frame 0 always; the latest frame is read either way)
    2. query regions: the estimate of t-1 warped by the flow of frame t, boxed
    3. encode frame t, read each object's memory inside the regions, decode
    4. soft aggregation; objects appearing in frame t take their given mask; objects not yet
       present stay at the absent logit
The same loop serves training (`RMNet.forward`, batched, with gradients) and inference.
With `regional_read` the memory read touches only the regions (models.memory_reader) and
gives the published result up to rounding; without it, it is the published dense read.
With `fast` (CUDA only) the memory lives in preallocated buffers and each step is replayed
as a CUDA graph: no host synchronisation and no Python work per kernel inside the loop.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from core.memory_bank import MemoryBank, StaticMemoryBank
from models.memory_reader import read_memory_dense, read_memory_regional
from models.rmnet import ABSENT_LOGIT, PRESENT_LOGIT_RANGE, ObjectIndex, RMNet
from utils.cuda_graph import GraphedStep


def present_channels(masks: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) masks -> (B, K) bool: channels that win the argmax somewhere."""
    batch, channels = masks.shape[:2]
    winners = masks.argmax(dim=1).flatten(1)
    present = torch.zeros(batch, channels, dtype=torch.bool, device=masks.device)
    return present.scatter_(1, winners, True)


class InferenceCore:
    """Propagates the masks of a batch of videos frame by frame.

    counts: the number of objects of each video (the most it will ever have); channels
    0..counts[b] of the masks are used, further channels stay at the absent logit.
    expected_frames: a hint for sizing the preallocated memory of the fast path.
    """

    def __init__(self, network: RMNet, counts: Sequence[int], memorize_every: int,
                 regional_read: bool = False, fast: bool = False,
                 expected_frames: Optional[int] = None):
        if memorize_every < 1:
            raise ValueError(f'memorize_every must be >= 1, got {memorize_every}')
        self.network = network
        self.counts = [int(n) for n in counts]
        self.memorize_every = memorize_every
        self.regional_read = regional_read or fast
        self.fast = fast
        self.expected_kept = None if expected_frames is None else expected_frames // memorize_every + 2

    def start(self, frame: torch.Tensor, masks: torch.Tensor) -> None:
        """Frame 0 (B, 3, H, W) and its given masks (B, K, H, W), one-hot or probabilities."""
        self.objects = ObjectIndex.from_counts(self.counts, frame.device)
        self.n_channels = masks.shape[1]
        self.in_use = self.objects.channel_in_use(self.n_channels)
        self.existing = present_channels(masks)
        self.frame_index = 0
        self.prev_has_new_objects = True
        if self.fast:
            self.memory = StaticMemoryBank(self.expected_kept)
            self.prev_frame, self.prev_probs = frame.clone(), masks.clone()
            self.frame_in, self.flow_in = torch.empty_like(frame), None
            self.new_masks_in = torch.zeros_like(masks)
            self.new_flag = torch.zeros(1, dtype=torch.bool, device=frame.device)
            self.graphed = GraphedStep(self._graph_step, enabled=frame.is_cuda)
        else:
            self.memory = MemoryBank()
            self.prev_frame, self.prev_probs = frame, masks

    def step(self, frame: torch.Tensor, flow: torch.Tensor,
             new_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Segment the next frame. `new_masks` (B, K, H, W): the given masks of this frame when
        objects appear in it. Returns probabilities (B, K, H, W); on the fast path they live in
        a buffer that the next step overwrites."""
        keep = self.frame_index % self.memorize_every == 0 or self.prev_has_new_objects
        if len(self.objects) == 0:
            probs = self._background_only(frame)
        elif self.fast:
            probs = self._fast_step(frame, flow, new_masks)
        else:
            probs = self._compute(self.prev_frame, self.prev_probs, frame, flow, new_masks, None)
            self.prev_frame, self.prev_probs = frame, probs
        if keep and len(self.objects):
            self.memory.keep()
        self.frame_index += 1
        self.prev_has_new_objects = new_masks is not None
        return probs

    def _fast_step(self, frame, flow, new_masks):
        self.frame_in.copy_(frame)
        if self.flow_in is None:
            self.flow_in = torch.empty_like(flow)
        self.flow_in.copy_(flow)
        self.new_flag.fill_(new_masks is not None)
        if new_masks is not None:
            self.new_masks_in.copy_(new_masks)
        if self.memory.keys is not None and self.memory.n_kept + 1 > self.memory.capacity:
            self.graphed.reset()
        return self.graphed()

    def _graph_step(self) -> torch.Tensor:
        probs = self._compute(self.prev_frame, self.prev_probs, self.frame_in, self.flow_in,
                              self.new_masks_in, self.new_flag)
        self.prev_frame.copy_(self.frame_in)
        self.prev_probs.copy_(probs)
        return probs

    def _compute(self, prev_frame, prev_probs, frame, flow, new_masks, new_flag) -> torch.Tensor:
        network, objects = self.network, self.objects
        key, value, region = network.memorize(prev_frame, prev_probs, objects)
        self.memory.write_latest(key, value, region)
        memory_keys, memory_values, memory_regions, n_frames = self.memory.read_set()

        query_region = network.query_region(prev_probs, flow, objects)
        query_key, query_value, r3, r2, pad = network.encode_query(frame)
        query_key, query_value = query_key[objects.batch], query_value[objects.batch]
        if self.regional_read:
            read = read_memory_regional(memory_keys, memory_values, memory_regions, query_key,
                                        query_value, query_region, n_frames)
        else:
            inside = memory_regions[:, None]
            query_inside = query_region[:, None]
            read = read_memory_dense(memory_keys * inside, memory_values * inside,
                                     query_key * query_inside, query_value * query_inside)
        fg_probs = network.decode(read, r3, r2, objects)
        logits = network.aggregate(fg_probs, objects, self.n_channels, pad)
        return F.softmax(self._objects_present(logits, new_masks, new_flag), dim=1)

    def _objects_present(self, logits: torch.Tensor, new_masks: Optional[torch.Tensor],
                         new_flag: Optional[torch.Tensor]) -> torch.Tensor:
        if new_masks is not None:
            new_masks = new_masks.to(logits.dtype)
            appearing = present_channels(new_masks) & ~self.existing
            if new_flag is not None:
                appearing = appearing & new_flag
            given = new_masks * PRESENT_LOGIT_RANGE + ABSENT_LOGIT
            logits = torch.where(appearing[:, :, None, None], given, logits)
            self.existing |= appearing
        absent = self.in_use & ~self.existing
        return torch.where(absent[:, :, None, None], ABSENT_LOGIT, logits)

    def _background_only(self, frame: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = frame.shape
        probs = frame.new_zeros(batch, self.n_channels, height, width)
        probs[:, 0] = 1
        return probs
