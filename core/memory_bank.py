"""The memory of a video: per-object keys, values and regions of the frames kept so far."""
from typing import List, Tuple

import torch


class MemoryBank:
    """Per-object keys (N, Ck, h, w), values (N, Cv, h, w) and regions (N, h, w) of kept frames.

    Keys and values are stored as encoded; readers apply the regions. The frame before the current one is always read as well: `read_set` appends it
    without keeping it, `keep` makes it permanent, so each frame is encoded once.
    """

    def __init__(self):
        self.keys: List[torch.Tensor] = []
        self.values: List[torch.Tensor] = []
        self.regions: List[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.keys)

    def keep(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.regions.append(region)

    def read_set(self, key: torch.Tensor, value: torch.Tensor,
                 region: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept frames plus (key, value, region): (N, Ck, T, h, w), (N, Cv, T, h, w), (N, T, h, w)."""
        return (torch.stack(self.keys + [key], dim=2), torch.stack(self.values + [value], dim=2),
                torch.stack(self.regions + [region], dim=1))
