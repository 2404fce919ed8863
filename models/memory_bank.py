"""The memory of a video: per-object keys, values and regions of the frames kept so far.

Every bank has the same interface:
    write_latest(key (N, Ck, h, w), value (N, Cv, h, w), region (N, h, w) 0/1)
        the frame before the current one; it is read together with the kept frames
    keep(pinned=False)
        make the latest frame permanent; pinned marks a frame that a bounded memory must
        never evict (frame 0, frames where objects were given)
    read(query_key (N, Ck, h, w), query_value (N, Cv, h, w), query_region (N, h, w))
        -> (N, 2 * Cv, h, w), the published memory read of the kept frames and the latest
    will_reallocate() -> bool
        True when the next write_latest reallocates buffers (a CUDA graph of the step must
        then be captured again)
Keys and values are stored as encoded; the reads apply the regions.
"""
import math
from typing import List, Optional, Tuple

import torch

from models.memory_read import read_memory_dense, read_memory_regional


class MemoryBank:
    """Lists of frames with the published dense read; autograd-safe (training, the dense test
    path). max_frames: 0 keeps every kept frame (published); N > 0 keeps the pinned frames and
    the N most recent other kept frames (TEST.MAX_MEMORY_FRAMES)."""

    def __init__(self, max_frames: int = 0):
        self.max_frames = max_frames
        self.keys: List[torch.Tensor] = []
        self.values: List[torch.Tensor] = []
        self.regions: List[torch.Tensor] = []
        self.pinned: List[bool] = []
        self.latest: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.keys)

    def write_latest(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> None:
        self.latest = (key, value, region)

    def keep(self, pinned: bool = False) -> None:
        key, value, region = self.latest
        self.keys.append(key)
        self.values.append(value)
        self.regions.append(region)
        self.pinned.append(pinned)
        if self.max_frames and self.pinned.count(False) > self.max_frames:
            oldest = self.pinned.index(False)
            for frames in (self.keys, self.values, self.regions, self.pinned):
                del frames[oldest]

    def will_reallocate(self) -> bool:
        return False

    def read(self, query_key: torch.Tensor, query_value: torch.Tensor,
             query_region: torch.Tensor) -> torch.Tensor:
        key, value, region = self.latest
        keys = torch.stack(self.keys + [key], dim=2)
        values = torch.stack(self.values + [value], dim=2)
        regions = torch.stack(self.regions + [region], dim=1)
        inside = regions[:, None]
        query_inside = query_region[:, None]
        return read_memory_dense(keys * inside, values * inside, query_key * query_inside,
                                 query_value * query_inside)


class StaticMemoryBank:
    """Preallocated (N, C, capacity, h, w) buffers and a device-side count of frames to read.

    Writes go to a slot addressed by a device tensor and nothing waits for the GPU, so a step
    that uses the bank can be captured in a CUDA graph; buffer addresses change only when the
    capacity grows (`will_reallocate` says so beforehand). Reads are regional.
    """

    def __init__(self, expected_frames: Optional[int] = None, growth: float = 1.5):
        self.capacity_hint = max(2, expected_frames or 8)
        self.growth = growth
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None
        self.regions: Optional[torch.Tensor] = None
        self.n_kept = 0
        self.pinned: List[bool] = []
        self.slot: Optional[torch.Tensor] = None     # int64 (1,): where the latest frame goes
        self.count: Optional[torch.Tensor] = None    # int32 (1,): frames to read = n_kept + 1

    def __len__(self) -> int:
        return self.n_kept

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def will_reallocate(self) -> bool:
        return self.n_kept + 1 > self.capacity

    def _allocate(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> None:
        capacity = max(self.capacity_hint, math.ceil(self.capacity * self.growth), self.n_kept + 1)
        n, key_dim, height, width = key.shape
        keys = key.new_zeros(n, key_dim, capacity, height, width)
        values = value.new_zeros(n, value.shape[1], capacity, height, width)
        regions = region.new_zeros(n, capacity, height, width)
        if self.keys is not None:
            keys[:, :, :self.n_kept] = self.keys[:, :, :self.n_kept]
            values[:, :, :self.n_kept] = self.values[:, :, :self.n_kept]
            regions[:, :self.n_kept] = self.regions[:, :self.n_kept]
        else:
            self.slot = torch.zeros(1, dtype=torch.long, device=key.device)
            self.count = torch.ones(1, dtype=torch.int32, device=key.device)
        self.keys, self.values, self.regions = keys, values, regions

    def write_latest(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> None:
        if self.will_reallocate():
            self._allocate(key, value, region)
        self.keys.index_copy_(2, self.slot, key.unsqueeze(2).to(self.keys.dtype))
        self.values.index_copy_(2, self.slot, value.unsqueeze(2).to(self.values.dtype))
        self.regions.index_copy_(1, self.slot, region.unsqueeze(1).to(self.regions.dtype))

    def keep(self, pinned: bool = False) -> None:
        self.n_kept += 1
        self.pinned.append(pinned)
        self.slot.add_(1)
        self.count.add_(1)

    def clear(self) -> None:
        """Forget every frame but keep the buffers (and so a captured graph) for the next video.
        The regions are zeroed: the reads count region positions over the whole buffer."""
        self.n_kept = 0
        self.pinned = []
        if self.keys is not None:
            self.regions.zero_()
            self.slot.zero_()
            self.count.fill_(1)

    def read(self, query_key: torch.Tensor, query_value: torch.Tensor,
             query_region: torch.Tensor) -> torch.Tensor:
        return read_memory_regional(self.keys, self.values, self.regions, query_key, query_value,
                                    query_region, self.count)
