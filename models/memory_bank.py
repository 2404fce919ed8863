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
Keys and values are stored as encoded; the reads apply the regions. This bank is a list of
frames (autograd-safe, the published dense read); models.packed_memory is the preallocated,
graph-safe bank of the regional read.
"""
from typing import List, Optional, Tuple

import torch

from models.memory_read import read_memory_dense


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
