"""The query side of a frame, as the memory read and the decoder take it."""
from typing import NamedTuple

import torch

from utils.padding import Padding


class QueryEncoding(NamedTuple):
    """What the memory read and the decoder need of a query frame (B frames): key (B, 128, h, w),
    value (B, 512, h, w), the decoder's skip features of r3 and r2 (they depend on the frame
    only, not on the object) and the padding to 1/16."""
    key: torch.Tensor
    value: torch.Tensor
    skip3: torch.Tensor
    skip2: torch.Tensor
    pad: Padding

    def frames(self, start: int, stop: int) -> 'QueryEncoding':
        """The encoding of frames start..stop-1 of a batch encoded together."""
        return QueryEncoding(self.key[start:stop], self.value[start:stop], self.skip3[start:stop],
                             self.skip2[start:stop], self.pad)
