"""The memory of a video: per-object keys, values and regions of the frames kept so far.

Both banks hold the frame before the current one as the latest entry: `write_latest` puts it
in, `read_set` returns the kept frames plus it, and `keep` makes it permanent, so every frame
is encoded once. Keys and values are stored as encoded; readers apply the regions.
"""
import math
from typing import List, Optional, Tuple

import torch

MemorySet = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


class MemoryBank:
    """Lists of (N, Ck, h, w) keys, (N, Cv, h, w) values and (N, h, w) regions; autograd-safe."""

    def __init__(self):
        self.keys: List[torch.Tensor] = []
        self.values: List[torch.Tensor] = []
        self.regions: List[torch.Tensor] = []
        self.latest: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def __len__(self) -> int:
        return len(self.keys)

    def write_latest(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> None:
        self.latest = (key, value, region)

    def read_set(self) -> MemorySet:
        """(N, Ck, T, h, w), (N, Cv, T, h, w), (N, T, h, w) and None (every frame is read)."""
        key, value, region = self.latest
        return (torch.stack(self.keys + [key], dim=2), torch.stack(self.values + [value], dim=2),
                torch.stack(self.regions + [region], dim=1), None)

    def keep(self) -> None:
        key, value, region = self.latest
        self.keys.append(key)
        self.values.append(value)
        self.regions.append(region)


class StaticMemoryBank:
    """Preallocated (N, C, capacity, h, w) buffers and a device-side count of frames to read.

    Writes go to a slot addressed by a device tensor and nothing waits for the GPU, so a step
    that uses the bank can be captured in a CUDA graph; buffer addresses change only when
    the capacity grows (`ensure_capacity` says so, and the graph must then be captured again).
    """

    def __init__(self, expected_frames: Optional[int] = None, growth: float = 1.5):
        self.capacity_hint = max(2, expected_frames or 8)
        self.growth = growth
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None
        self.regions: Optional[torch.Tensor] = None
        self.n_kept = 0
        self.slot: Optional[torch.Tensor] = None     # int64 (1,): where the latest frame goes
        self.count: Optional[torch.Tensor] = None    # int32 (1,): frames to read = n_kept + 1

    def __len__(self) -> int:
        return self.n_kept

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def ensure_capacity(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> bool:
        """Make room for one more frame; True when the buffers were (re)allocated."""
        if self.n_kept + 1 <= self.capacity:
            return False
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
        return True

    def write_latest(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> None:
        self.ensure_capacity(key, value, region)
        self.keys.index_copy_(2, self.slot, key.unsqueeze(2).to(self.keys.dtype))
        self.values.index_copy_(2, self.slot, value.unsqueeze(2).to(self.values.dtype))
        self.regions.index_copy_(1, self.slot, region.unsqueeze(1).to(self.regions.dtype))

    def read_set(self) -> MemorySet:
        """The whole buffers and the device count of leading frames that are valid."""
        return self.keys, self.values, self.regions, self.count

    def keep(self) -> None:
        self.n_kept += 1
        self.slot.add_(1)
        self.count.add_(1)
