"""The published memory read (SPEC 4e): softmax over every memory position.

The published model multiplies memory and query keys/values by their region maps and then
attends over every memory position, so a position outside its region still enters the
softmax with score 0: it adds exp(0 - max) to the denominator and nothing to the numerator,
and a query position outside its region has all scores 0 (a plain average of the values).
The regional read of models.packed_memory touches only the regions and gives this result.
"""
import math

import torch


def read_memory_dense(memory_keys: torch.Tensor, memory_values: torch.Tensor,
                      query_key: torch.Tensor, query_value: torch.Tensor) -> torch.Tensor:
    """The published memory read over every memory position.

    memory_keys (N, Ck, T, h, w) and memory_values (N, Cv, T, h, w) are zero outside their
    regions, query_key (N, Ck, h, w) and query_value (N, Cv, h, w) outside the query region.
    Returns (N, 2 * Cv, h, w): [read values, query values].
    """
    n, key_dim, frames, height, width = memory_keys.shape
    value_dim = memory_values.shape[1]
    mk = memory_keys.reshape(n, key_dim, frames * height * width).transpose(1, 2)
    qk = query_key.reshape(n, key_dim, height * width)
    affinity = torch.bmm(mk, qk) / math.sqrt(key_dim)
    affinity = torch.softmax(affinity, dim=1)
    read = torch.bmm(memory_values.reshape(n, value_dim, frames * height * width), affinity)
    return torch.cat([read.view(n, value_dim, height, width), query_value], dim=1)
