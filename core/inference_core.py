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
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from core.memory_bank import MemoryBank
from models.memory_reader import read_memory_dense, read_memory_regional
from models.rmnet import ABSENT_LOGIT, PRESENT_LOGIT_RANGE, ObjectIndex, RMNet


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
    """

    def __init__(self, network: RMNet, counts: Sequence[int], memorize_every: int,
                 regional_read: bool = False):
        if memorize_every < 1:
            raise ValueError(f'memorize_every must be >= 1, got {memorize_every}')
        self.network = network
        self.regional_read = regional_read
        self.counts = [int(n) for n in counts]
        self.memorize_every = memorize_every
        self.objects: Optional[ObjectIndex] = None

    def start(self, frame: torch.Tensor, masks: torch.Tensor) -> None:
        """Frame 0 (B, 3, H, W) and its given masks (B, K, H, W), one-hot or probabilities."""
        self.objects = ObjectIndex.from_counts(self.counts, frame.device)
        self.n_channels = masks.shape[1]
        self.in_use = self.objects.channel_in_use(self.n_channels)
        self.existing = present_channels(masks)
        self.memory = MemoryBank()
        self.prev_frame = frame
        self.prev_probs = masks
        self.frame_index = 0
        self.prev_has_new_objects = True

    def step(self, frame: torch.Tensor, flow: torch.Tensor,
             new_masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Segment the next frame. `new_masks` (B, K, H, W): the given masks of this frame when
        objects appear in it. Returns probabilities (B, K, H, W)."""
        network, objects = self.network, self.objects
        if len(objects) == 0:
            probs = self._background_only(frame)
        else:
            key, value, region = network.memorize(self.prev_frame, self.prev_probs, objects)
            memory_keys, memory_values, memory_regions = self.memory.read_set(key, value, region)
            if (self.frame_index % self.memorize_every == 0) or self.prev_has_new_objects:
                self.memory.keep(key, value, region)

            query_region = network.query_region(self.prev_probs, flow, objects)
            query_key, query_value, r3, r2, pad = network.encode_query(frame)
            query_key, query_value = query_key[objects.batch], query_value[objects.batch]
            if self.regional_read:
                read = read_memory_regional(memory_keys, memory_values, memory_regions, query_key,
                                            query_value, query_region)
            else:
                inside = memory_regions[:, None]
                query_inside = query_region[:, None]
                read = read_memory_dense(memory_keys * inside, memory_values * inside,
                                         query_key * query_inside, query_value * query_inside)
            fg_probs = network.decode(read, r3[objects.batch], r2[objects.batch])
            logits = network.aggregate(fg_probs, objects, self.n_channels, pad)
            probs = F.softmax(self._objects_present(logits, new_masks), dim=1)

        self.prev_frame, self.prev_probs = frame, probs
        self.frame_index += 1
        self.prev_has_new_objects = new_masks is not None
        return probs

    def _objects_present(self, logits: torch.Tensor, new_masks: Optional[torch.Tensor]) -> torch.Tensor:
        if new_masks is not None:
            new_masks = new_masks.to(logits.dtype)
            appearing = present_channels(new_masks) & ~self.existing
            given = new_masks * PRESENT_LOGIT_RANGE + ABSENT_LOGIT
            logits = torch.where(appearing[:, :, None, None], given, logits)
            self.existing = self.existing | appearing
        absent = self.in_use & ~self.existing
        return torch.where(absent[:, :, None, None], logits.new_tensor(ABSENT_LOGIT), logits)

    def _background_only(self, frame: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = frame.shape
        probs = frame.new_zeros(batch, self.n_channels, height, width)
        probs[:, 0] = 1
        return probs
