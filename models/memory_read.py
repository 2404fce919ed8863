"""Memory reads: the published dense read, and the regional read that gives the same result.

The published model multiplies memory and query keys/values by their region maps and then
attends over every memory position, so a position outside its region still enters the
softmax with score 0: it adds exp(0 - max) to the denominator and nothing to the numerator,
and a query position outside its region has all scores 0 (a plain average of the values).
`read_memory_regional` is the one place that chooses how the regional read runs: the Triton
kernel (models.regional_attention_triton) for CUDA tensors, unless Triton is missing, fails
or RMNET_NO_TRITON=1; otherwise PyTorch: one object at a time over the in-region positions
for a bank whose frames are all valid, or a masked read over the whole preallocated buffer
(no host synchronisation, so it can be captured in a CUDA graph).
"""
import logging
import math
import os
from typing import Optional

import torch

from models.regional_attention_triton import TRITON_IMPORTED, regional_attention_triton

logger = logging.getLogger(__name__)
_triton_failed = False


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


def read_memory_regional_masked(memory_keys: torch.Tensor, memory_values: torch.Tensor,
                                memory_regions: torch.Tensor, query_key: torch.Tensor,
                                query_value: torch.Tensor, query_region: torch.Tensor,
                                n_frames: torch.Tensor) -> torch.Tensor:
    """The published read over the first `n_frames` (a one-element device tensor) frames of a
    preallocated bank: the dense read with the later frames masked out of the softmax.
    Nothing here reads a device value on the host, so it can be captured in a CUDA graph."""
    n, key_dim, capacity, height, width = memory_keys.shape
    value_dim = memory_values.shape[1]
    valid_frames = torch.arange(capacity, device=memory_keys.device) < n_frames.to(memory_keys.device)
    valid = valid_frames[:, None].expand(capacity, height * width).reshape(-1)
    inside = memory_regions[:, None].float()
    mk = (memory_keys.float() * inside).reshape(n, key_dim, -1).transpose(1, 2)
    qk = (query_key.float() * query_region[:, None].float()).reshape(n, key_dim, height * width)
    scores = torch.bmm(mk, qk) / math.sqrt(key_dim)
    scores = scores.masked_fill(~valid[None, :, None], float('-inf'))
    weights = torch.softmax(scores, dim=1)
    read = torch.bmm((memory_values.float() * inside).reshape(n, value_dim, -1), weights)
    read = read.view(n, value_dim, height, width).to(query_value.dtype)
    return torch.cat([read, query_value * query_region[:, None].to(query_value.dtype)], dim=1)


def triton_enabled(device: torch.device) -> bool:
    """True when the regional read runs the Triton kernel on `device`."""
    return (device.type == 'cuda' and TRITON_IMPORTED and not _triton_failed
            and os.environ.get('RMNET_NO_TRITON', '') in ('', '0'))


def read_memory_regional(memory_keys: torch.Tensor, memory_values: torch.Tensor,
                         memory_regions: torch.Tensor, query_key: torch.Tensor,
                         query_value: torch.Tensor, query_region: torch.Tensor,
                         n_frames: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The regional read (see the module docstring for how it runs).

    n_frames: a one-element int32 tensor, how many leading memory frames are valid (a
    preallocated bank); None when every frame is.
    """
    global _triton_failed
    if triton_enabled(memory_keys.device):
        try:
            return regional_attention_triton(memory_keys, memory_values, memory_regions, query_key,
                                             query_value, query_region, n_frames)
        except Exception as e:  # a Triton or driver problem must not stop inference
            _triton_failed = True
            logger.warning('The Triton regional read failed (%s: %s); using the PyTorch read',
                           type(e).__name__, e)
    if n_frames is None:
        return read_memory_regional_torch(memory_keys, memory_values, memory_regions, query_key,
                                          query_value, query_region)
    return read_memory_regional_masked(memory_keys, memory_values, memory_regions, query_key,
                                       query_value, query_region, n_frames)
