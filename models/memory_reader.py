"""Memory reads: the published dense read, and the regional read that gives the same result.

The published model multiplies memory and query keys/values by their region maps and then
attends over every memory position, so a position outside its region still enters the
softmax with score 0: it adds exp(0 - max) to the denominator and nothing to the numerator,
and a query position outside its region has all scores 0 (a plain average of the values).
`read_memory_regional` computes only the in-region scores and adds those terms explicitly.
"""
import math
from typing import Optional

import torch

from models.regional_attention_triton import regional_attention_triton, triton_available


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


def _read_one_object(keys: torch.Tensor, values: torch.Tensor, region: torch.Tensor,
                     query_key: torch.Tensor, query_region: torch.Tensor) -> torch.Tensor:
    """keys (Ck, P), values (Cv, P), region (P,), query_key (Ck, Q), query_region (Q,) -> (Cv, Q)."""
    n_positions = region.numel()
    inside = region.nonzero().squeeze(1)
    queries = query_region.nonzero().squeeze(1)
    mk, mv = keys[:, inside].float(), values[:, inside].float()
    outside = n_positions - inside.numel()
    read = (mv.sum(dim=1) / n_positions)[:, None].repeat(1, query_region.numel())
    if queries.numel() and inside.numel():
        scores = mk.t() @ query_key[:, queries].float() / math.sqrt(keys.shape[0])
        top = scores.max(dim=0).values
        if outside:
            top = top.clamp(min=0)
        weights = torch.exp(scores - top)
        denominator = weights.sum(dim=0) + outside * torch.exp(-top)
        read[:, queries] = (mv @ weights) / denominator
    elif queries.numel():
        read[:, queries] = 0
    return read


def read_memory_regional_torch(memory_keys: torch.Tensor, memory_values: torch.Tensor,
                               memory_regions: torch.Tensor, query_key: torch.Tensor,
                               query_value: torch.Tensor, query_region: torch.Tensor) -> torch.Tensor:
    """Regional read in PyTorch (one object at a time; the reference for the GPU kernel).

    memory_regions (N, T, h, w) and query_region (N, h, w) are 0/1 maps; keys and values need
    only be right inside their regions. Returns what `read_memory_dense` returns.
    """
    n, key_dim, frames, height, width = memory_keys.shape
    value_dim = memory_values.shape[1]
    reads = []
    for i in range(n):
        reads.append(_read_one_object(memory_keys[i].reshape(key_dim, -1),
                                      memory_values[i].reshape(value_dim, -1),
                                      memory_regions[i].reshape(-1) > 0,
                                      query_key[i].reshape(key_dim, -1),
                                      query_region[i].reshape(-1) > 0))
    read = torch.stack(reads).view(n, value_dim, height, width).to(query_value.dtype)
    return torch.cat([read, query_value * query_region[:, None].to(query_value.dtype)], dim=1)


def read_memory_regional(memory_keys: torch.Tensor, memory_values: torch.Tensor,
                         memory_regions: torch.Tensor, query_key: torch.Tensor,
                         query_value: torch.Tensor, query_region: torch.Tensor,
                         n_frames: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Regional read: the Triton kernel for CUDA tensors when Triton works, else PyTorch.

    n_frames: a one-element tensor, how many leading memory frames are valid (a preallocated
    bank); None when every frame is.
    """
    if memory_keys.is_cuda and triton_available():
        return regional_attention_triton(memory_keys, memory_values, memory_regions, query_key,
                                         query_value, query_region, n_frames)
    if n_frames is not None:
        frames = int(n_frames.item())
        memory_keys, memory_values = memory_keys[:, :, :frames], memory_values[:, :, :frames]
        memory_regions = memory_regions[:, :frames]
    return read_memory_regional_torch(memory_keys, memory_values, memory_regions, query_key,
                                      query_value, query_region)
