"""The memory of a video as packed, preallocated slots: the published read over regions only.

Layout. Every frame in memory has a slot s of keys (N, S, P, Ck) and values (N, S, P, Cv)
(P = h * w positions): its in-region positions come first, in frame order, and
`slot_count[n, s]` says how many there are. An fp32 memory read by the Triton kernel
holds bf16 planes instead (`to_planes`: keys 3 x Ck channels, values 2 x Cv). Slots
0 .. n_read - 1 are read: the kept frames and the latest one (the frame before the current
one), which `write_latest` puts into slot `latest_slot` and `keep` makes permanent. Per slot
and in total over the kept frames the bank also holds the sums of the in-region values and
the in-region counts, updated when a frame is written, kept or evicted instead of re-reading
the bank every frame.

The read. The published model multiplies keys and values by their 0/1 region maps and takes
a softmax over all T * P memory positions, so with s = k . q / sqrt(Ck):
    read(q) = sum_in e^s v / (sum_in e^s + n_out),   n_out = T * P - (in-region positions)
for a query position inside its region (an out-of-region memory position has score 0:
e^0 in the denominator, nothing in the numerator), and the plain average sum_in v / (T * P)
for a query position outside it (all its scores are 0). Only in-region keys, values and
query positions are touched: the query positions are packed the same way as the memory.

Bounded memory (max_frames = N > 0) keeps the pinned frames (frame 0 and frames where objects
were given) and the N most recent other kept frames; the oldest of those gives its slot to
the next latest frame. Unbounded (0, the published behaviour) grows the buffers as needed.

CUDA graphs. write_latest, keep and read launch kernels whose arguments are the fixed buffers
and device counters (latest_slot, n_read, ...) that these calls update themselves, so a step
captured at frame k replays correctly at frames k + 1, k + 2, ... until `will_reallocate()`.
The host keeps a mirror of the counts (how many kept, pinned) only to know when buffers grow;
keep() therefore runs eagerly once per kept frame (it never waits for the GPU). `pinned` is a
host value, so a captured keep would always repeat the pinned-ness it was captured with.
"""
import logging
import math
import os
from typing import Optional, Tuple

import torch

logger = logging.getLogger(__name__)

try:
    from models.packed_read_triton import packed_read_triton
except ImportError:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it
    packed_read_triton = None

_GROWTH = 1.5                    # unbounded memory: capacity grows by this factor
_PINNED_AGE = torch.iinfo(torch.int64).max
_NO_SCORE = -1.0e30              # a finite "minus infinity": fully masked rows stay free of NaN
_TORCH_CHUNK_SCORES = 1 << 25    # the PyTorch read computes at most this many scores at once


def pack_order(region: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """region (N, P) 0/1 -> order (N, P) int64, count (N,) int32.

    order[n] lists the in-region positions first (in frame order), then the others; count[n]
    is the number of in-region positions. A cumsum scatter: no host synchronisation.
    """
    inside = (region > 0.5).long()
    count = inside.sum(dim=1)
    destination = torch.where(inside > 0, inside.cumsum(dim=1) - 1,
                              count[:, None] + (1 - inside).cumsum(dim=1) - 1)
    positions = torch.arange(region.shape[1], device=region.device).expand_as(destination)
    order = torch.empty_like(destination).scatter_(1, destination, positions)
    return order, count.to(torch.int32)


def pack_positions(features: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """features (N, C, h, w), order (N, P) -> (N, P, C): positions in packed order."""
    flat = features.flatten(2).transpose(1, 2)
    return torch.gather(flat, 1, order[:, :, None].expand(-1, -1, flat.shape[2]))


def to_planes(x: torch.Tensor, planes: int) -> torch.Tensor:
    """fp32 x (..., C) -> bf16 (..., planes * C): [high | mid | low], each the bf16 rounding of
    what the planes before it leave. 3 planes hold x exactly (24 significant bits as 3 x 8; for
    finite |x| below bf16's largest value, 3.39e38, but near fp32's underflow); 2 planes within
    2^-17 |x|."""
    parts, rest = [], x.float()
    for _ in range(planes):
        parts.append(rest.to(torch.bfloat16))
        rest = rest - parts[-1].float()
    return torch.cat(parts, dim=-1)


def from_planes(x: torch.Tensor, planes: int) -> torch.Tensor:
    """(..., planes * C) -> fp32 (..., C): the sum of the planes (planes 1: x in fp32)."""
    return x.float() if planes == 1 else x.unflatten(-1, (planes, -1)).float().sum(dim=-2)


def triton_enabled(tensor: torch.Tensor) -> bool:
    """The Triton kernel serves CUDA tensors when Triton imports and RMNET_NO_TRITON is unset."""
    return (tensor.is_cuda and packed_read_triton is not None and not PackedMemoryBank.triton_failed
            and os.environ.get('RMNET_NO_TRITON', '') in ('', '0'))


class PackedMemoryBank:
    """Per-object memory of a video in packed slots (see the module docstring).

    expected_frames: a hint of how many frames the memory will hold (kept + latest), for
    the first allocation. max_frames: 0 keeps every kept frame (published); N > 0 keeps the
    pinned frames and the N most recent other kept frames. fp32_planes: store an fp32 memory
    as bf16 planes (keys 3, values 2: `to_planes`), which the Triton kernel reads on tensor
    cores at fp32's precision; None: when that kernel serves the memory's device.
    """

    triton_failed = False        # set once, process-wide, when the kernel fails to run

    def __init__(self, expected_frames: Optional[int] = None, max_frames: int = 0,
                 fp32_planes: Optional[bool] = None):
        if max_frames < 0:
            raise ValueError(f'max_frames must be >= 0, got {max_frames}')
        self.max_frames = max_frames
        self.fp32_planes = fp32_planes
        self.planes = (1, 1)                           # (key planes, value planes) of the buffers
        self.capacity_hint = max(2, expected_frames or 8)
        if max_frames:
            self.capacity_hint = min(self.capacity_hint, max_frames + 2)
        self.n_kept = 0
        self.n_pinned = 0
        self.keys: Optional[torch.Tensor] = None       # (N, S, P, planes[0] * Ck)
        self.values: Optional[torch.Tensor] = None     # (N, S, P, planes[1] * Cv)
        self.slot_count: Optional[torch.Tensor] = None  # (N, S) int32: in-region positions
        self.slot_sum: Optional[torch.Tensor] = None   # (N, S, Cv) float64: in-region value sums
        self.slot_age: Optional[torch.Tensor] = None   # (S,) int64: keep order; pinned: never evicted

    def __len__(self) -> int:
        return self.n_kept

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[1]

    def nbytes(self) -> int:
        """The bytes of GPU memory the buffers hold."""
        buffers = (self.keys, self.values, self.slot_count, self.slot_sum, self.slot_age)
        return sum(b.numel() * b.element_size() for b in buffers if b is not None)

    def will_reallocate(self) -> bool:
        """True when the next write_latest allocates new buffers (a captured graph is then stale)."""
        return self.n_kept + 1 > self.capacity

    def _allocate(self, key: torch.Tensor, value: torch.Tensor) -> None:
        needed = self.n_kept + 1
        capacity = max(self.capacity_hint, math.ceil(self.capacity * _GROWTH))
        if self.max_frames:
            capacity = min(capacity, self.n_pinned + self.max_frames + 2)
        capacity = max(capacity, needed)
        n, key_dim, height, width = key.shape
        value_dim, positions, device = value.shape[1], height * width, key.device
        if self.keys is None:
            planes = self.fp32_planes if self.fp32_planes is not None else triton_enabled(key)
            self.planes = (3, 2) if planes and key.dtype == torch.float32 else (1, 1)
        dtype = torch.bfloat16 if self.planes != (1, 1) else key.dtype
        keys = torch.zeros(n, capacity, positions, self.planes[0] * key_dim, dtype=dtype, device=device)
        values = torch.zeros(n, capacity, positions, self.planes[1] * value_dim, dtype=dtype, device=device)
        slot_count = torch.zeros(n, capacity, dtype=torch.int32, device=device)
        slot_sum = torch.zeros(n, capacity, value_dim, dtype=torch.float64, device=device)
        slot_age = torch.zeros(capacity, dtype=torch.int64, device=device)
        if self.keys is None:
            self.latest_slot = torch.zeros(1, dtype=torch.int64, device=device)
            self.n_read = torch.ones(1, dtype=torch.int64, device=device)
            self.n_recent = torch.zeros(1, dtype=torch.int64, device=device)
            self.clock = torch.zeros(1, dtype=torch.int64, device=device)
            self.pinned_age = torch.full((1,), _PINNED_AGE, dtype=torch.int64, device=device)
            self.kept_sum = torch.zeros(n, value_dim, dtype=torch.float64, device=device)
            self.kept_count = torch.zeros(n, dtype=torch.int64, device=device)
        else:
            old = self.capacity
            keys[:, :old], values[:, :old] = self.keys, self.values
            slot_count[:, :old], slot_sum[:, :old] = self.slot_count, self.slot_sum
            slot_age[:old] = self.slot_age
        self.keys, self.values, self.slot_count, self.slot_sum, self.slot_age = (
            keys, values, slot_count, slot_sum, slot_age)

    def write_latest(self, key: torch.Tensor, value: torch.Tensor, region: torch.Tensor) -> None:
        """The frame before the current one: key (N, Ck, h, w), value (N, Cv, h, w), region (N, h, w) 0/1."""
        if key.dtype != value.dtype:
            raise ValueError(f'keys and values must share a dtype, got {key.dtype} and {value.dtype}')
        if self.will_reallocate():
            self._allocate(key, value)
        order, count = pack_order(region.flatten(1))
        slot = self.latest_slot
        self.keys.index_copy_(1, slot, self.as_stored(pack_positions(key, order), self.planes[0]).unsqueeze(1))
        self.values.index_copy_(1, slot, self.as_stored(pack_positions(value, order), self.planes[1]).unsqueeze(1))
        self.slot_count.index_copy_(1, slot, count[:, None])
        inside = (region.flatten(1) > 0.5).to(torch.float32)
        value_sum = torch.bmm(value.flatten(2).float(), inside[:, :, None]).to(torch.float64)
        self.slot_sum.index_copy_(1, slot, value_sum.transpose(1, 2))

    def as_stored(self, x: torch.Tensor, planes: int) -> torch.Tensor:
        """x in the buffers' form: its planes, or x in their dtype."""
        return x.to(self.keys.dtype) if planes == 1 else to_planes(x, planes)

    def keep(self, pinned: bool = False) -> None:
        """Make the latest frame permanent. Pinned frames are never evicted by a bounded memory."""
        slot = self.latest_slot
        self.slot_age.index_copy_(0, slot, self.pinned_age if pinned else self.clock)
        self.clock.add_(1)
        self.kept_sum.add_(self.slot_sum.index_select(1, slot).squeeze(1))
        self.kept_count.add_(self.slot_count.index_select(1, slot).squeeze(1))
        self.n_kept += 1
        self.n_pinned += int(pinned)
        if self.max_frames and not pinned:
            self._keep_bounded()
        else:
            self.latest_slot.copy_(self.n_read)
            self.n_read.add_(1)

    def _keep_bounded(self) -> None:
        """After keeping an unpinned frame: evict the oldest unpinned one if there are too many."""
        self.n_recent.add_(1)
        evict = self.n_recent > self.max_frames                                    # (1,) bool
        slots = torch.arange(self.capacity, device=self.slot_age.device)
        age = torch.where(slots < self.n_read, self.slot_age, _PINNED_AGE)
        oldest = age.argmin().reshape(1)
        self.kept_sum.sub_(self.slot_sum.index_select(1, oldest).squeeze(1) * evict.to(torch.float64))
        self.kept_count.sub_(self.slot_count.index_select(1, oldest).squeeze(1) * evict.long())
        self.n_recent.sub_(evict.long())
        self.latest_slot.copy_(torch.where(evict, oldest, self.n_read))
        self.n_read.add_((~evict).long())
        if self.n_kept - self.n_pinned > self.max_frames:
            self.n_kept -= 1

    def clear(self, expected_frames: Optional[int] = None) -> None:
        """Forget every frame but keep the buffers (and so a captured graph) for the next video;
        buffers smaller than `expected_frames` are dropped, to be allocated once at that size."""
        self.n_kept = 0
        self.n_pinned = 0
        if expected_frames:
            self.capacity_hint = max(2, expected_frames)
            if self.max_frames:
                self.capacity_hint = min(self.capacity_hint, self.max_frames + 2)
            if self.capacity < self.capacity_hint:     # free the small buffers before allocating
                self.keys = self.values = self.slot_count = self.slot_sum = self.slot_age = None
        if self.keys is None:
            return
        for counter in (self.latest_slot, self.n_recent, self.clock, self.kept_sum, self.kept_count,
                        self.slot_count, self.slot_sum, self.slot_age):
            counter.zero_()
        self.n_read.fill_(1)

    def region_fraction(self) -> float:
        """The mean share of a frame's positions inside its region, over the frames read now
        (what the read's cost scales with; 1.0: every box covers the whole frame). Waits for
        the GPU: for reports, not for the loop."""
        if self.keys is None:
            return 0.0
        n_read = int(self.n_read)
        return float(self.slot_count[:, :n_read].double().mean()) / self.keys.shape[2]

    def read(self, query_key: torch.Tensor, query_value: torch.Tensor,
             query_region: torch.Tensor) -> torch.Tensor:
        """The published dense read of the kept frames and the latest one, over the regions.

        query_key (N, Ck, h, w), query_value (N, Cv, h, w), query_region (N, h, w) 0/1.
        Returns (N, 2 * Cv, h, w): [read values, query_value * query_region].
        """
        n, value_dim, height, width = query_value.shape
        positions = height * width
        latest = self.latest_slot
        memory_positions = self.n_read * positions
        value_sum = self.kept_sum + self.slot_sum.index_select(1, latest).squeeze(1)
        inside = self.kept_count + self.slot_count.index_select(1, latest).squeeze(1)
        uniform = (value_sum / memory_positions).to(query_value.dtype)
        outside = (memory_positions - inside).to(torch.float32)
        query_order, query_count = pack_order(query_region.flatten(1))
        query_keys = self.as_stored(pack_positions(query_key, query_order), self.planes[0]).contiguous()
        out = uniform[:, :, None].expand(n, value_dim, positions).contiguous()
        self._read_packed(query_keys, query_order, query_count, outside, out)
        region = query_region[:, None].to(query_value.dtype)
        return torch.cat([out.view(n, value_dim, height, width), query_value * region], dim=1)

    def _read_packed(self, query_keys, query_order, query_count, outside, out) -> None:
        """Write the in-region queries' reads into out (N, Cv, P): Triton, else PyTorch."""
        if triton_enabled(out) and self.keys.element_size() == 2:   # fp32 only as planes
            try:
                packed_read_triton(self.keys, self.values, self.slot_count, self.n_read, query_keys,
                                   query_order, query_count, outside, out, planes=self.planes)
                return
            except Exception as e:  # a Triton/driver problem must not stop inference
                PackedMemoryBank.triton_failed = True
                logger.warning('The Triton memory read failed (%s: %s); using the PyTorch path',
                               type(e).__name__, e)
        read_packed_torch(self.keys, self.values, self.slot_count, self.n_read, query_keys,
                          query_order, query_count, outside, out, host_counts=not out.is_cuda,
                          planes=self.planes)


def read_packed_torch(keys: torch.Tensor, values: torch.Tensor, slot_count: torch.Tensor,
                      n_read: torch.Tensor, query_keys: torch.Tensor, query_order: torch.Tensor,
                      query_count: torch.Tensor, outside: torch.Tensor, out: torch.Tensor,
                      host_counts: bool, planes: Tuple[int, int] = (1, 1)) -> None:
    """The packed read in PyTorch, with the arguments of models.packed_read_triton.

    The same online softmax as the kernel, over chunks of slots with masks instead of counts:
    a fixed schedule for given shapes, safe in a CUDA graph capture. host_counts (CPU tensors,
    never inside a capture): read the longest packed query and memory region on the host and
    skip the padding beyond them. planes: as the kernel's, summed back to fp32 here.
    """
    n, capacity, positions, key_dim = keys.shape
    key_dim //= planes[0]
    value_dim = values.shape[3] // planes[1]
    device = keys.device
    rows = columns = positions
    if host_counts:
        rows, columns = int(query_count.max()), int(slot_count.max())
        if rows == 0:
            return
    q = from_planes(query_keys[:, :rows], planes[0])
    m = torch.where(outside > 0, 0.0, _NO_SCORE)[:, None].expand(n, rows)
    l = outside[:, None].expand(n, rows)
    acc = torch.zeros(n, rows, value_dim, device=device)
    chunk = max(1, _TORCH_CHUNK_SCORES // (n * rows * max(1, columns)))
    offsets = torch.arange(columns, device=device)
    scale = 1.0 / math.sqrt(key_dim)
    for first in range(0, capacity if columns else 0, chunk):
        last = min(capacity, first + chunk)
        slots = torch.arange(first, last, device=device)
        valid = (offsets < slot_count[:, first:last, None]) & (slots < n_read)[None, :, None]
        k = from_planes(keys[:, first:last, :columns], planes[0]).reshape(n, -1, key_dim)
        v = from_planes(values[:, first:last, :columns], planes[1]).reshape(n, -1, value_dim)
        scores = torch.where(valid.reshape(n, 1, -1), torch.bmm(q, k.transpose(1, 2)) * scale,
                             float('-inf'))
        m_new = torch.maximum(m, scores.amax(dim=2))
        alpha = torch.exp(m - m_new)
        weights = torch.exp(scores - m_new[:, :, None])
        l = l * alpha + weights.sum(dim=2)
        acc = acc * alpha[:, :, None] + torch.bmm(weights, v)
        m = m_new
    read = (acc / l[:, :, None]).transpose(1, 2).to(out.dtype)                  # (N, Cv, rows) packed
    in_region = (torch.arange(rows, device=device) < query_count[:, None])[:, None, :]
    index = query_order[:, None, :rows].expand(-1, value_dim, -1)
    out.scatter_(2, index, torch.where(in_region, read, out.gather(2, index)))
