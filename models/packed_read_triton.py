"""The packed memory read as two Triton kernels (see models.packed_memory for the layout).

Memory: keys (N, S, P, Ck) and values (N, S, P, Cv), bf16 or fp16, one slot per frame, each
slot holding its `slot_count[n, s]` in-region positions at the front; slots 0 .. n_read - 1
are read. Queries: the in-region query keys packed at the front of (N, P, Ck), `query_count[n]`
of them, and `query_order[n, i]`, the position of packed query i in the frame.

fp32 memories come as bf16 planes (models.packed_memory.to_planes): keys and query keys as 3
(high, mid, low: fp32 exactly), values as 2. A score tile is the sum of the six products of
key planes whose ranks sum to at most 2 (the dropped ones are below 2^-24 of the sum of the
products' magnitudes), a value tile the three products of the high and low planes of the
weights and of the values; every product accumulates in fp32 on the tensor cores, and the
planes load as 16-byte copies like a bf16 memory's, with no splitting after the load.

`_partial_read_kernel`: one program per (tile of packed queries, tile of value channels,
object, memory split). A split is a contiguous range of slots; the program runs an online
softmax (FlashAttention style, base-2 exponentials) over the in-region tiles of its slots
and writes its running max m, denominator l and unnormalised read acc. Split 0 starts from
the out-of-region positions as one virtual block of score 0: m = 0, l = their count. The
program reads each key and value of its slots once for all the queries of its tile (the
tiles of one slot range run side by side and share them through L2); programs of query tiles
past `query_count` do nothing, so only in-region query tiles cost time. When a 16-bit
memory's buffers start 16-byte aligned and its object and slot strides are multiples of 16
elements (checked on the host: `aligned_slots`; the bank's own buffers are), the kernel is told
so, and keys and values load as 16-byte vectors through pipelined cp.async copies; otherwise
the loads carry no such hint. A slot's whole memory tiles run without the position mask and
its last, partial tile apart (`tail_apart`).
`_combine_kernel` merges the splits, sum_k 2^(m_k - M) acc_k / sum_k 2^(m_k - M) l_k, and
writes each packed query's read to its frame position. Nothing waits for the GPU and every
grid depends only on shapes, so both launches can be captured in a CUDA graph.
"""
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from triton import knobs

_LOG2E = 1.4426950408889634
_NO_SCORE = tl.constexpr(-1.0e30)   # a finite "minus infinity": fully masked rows stay free of NaN
_SCRATCH_ROWS = 32768        # n_splits * objects * positions of the fp32 partial results, at most
_MAX_SPLITS = 16           # one object alone still fills an H100/H200 with programs

# Tile sizes (BLOCK_Q query positions, BLOCK_M memory positions, BLOCK_V value channels, warps,
# pipeline stages). A program computes its tile's scores once per BLOCK_V value channels, so
# wider value tiles recompute less: bf16 takes half the 512 value channels (acc 128 x 256 fp32
# over 8 warps, memory tiles of 64 positions, 3 stages of cp.async loads), which read whole-frame
# boxes about 1.5 times faster than 128-wide tiles on an H200 (tools/benchmark_memory_read.py
# --sweep --box 1). fp32 (bf16 planes: six products per score tile, three per value tile) holds
# three query key planes in shared memory beside its stages, so its memory tiles are 32 positions.
# Fixed per precision: no autotuning at the first call of a video, whose memory is too short to
# judge by.
KernelConfig = Tuple[int, int, int, int, int]
DEFAULT_CONFIGS = {torch.bfloat16: (128, 64, 256, 8, 3), torch.float16: (128, 64, 256, 8, 3),
                   torch.float32: (128, 32, 256, 8, 2)}
CANDIDATE_CONFIGS = {torch.bfloat16: [(128, 64, 256, 8, 3), (128, 32, 256, 8, 4), (128, 64, 128, 8, 3),
                                      (128, 32, 128, 8, 3), (64, 32, 512, 8, 3), (128, 64, 256, 8, 2),
                                      (64, 64, 128, 4, 3)],
                     torch.float32: [(128, 32, 256, 8, 2), (128, 32, 128, 8, 2), (128, 32, 128, 8, 3),
                                     (64, 32, 128, 4, 3), (128, 16, 256, 8, 3)]}
_INTERPRETED_CONFIG = (32, 32, 32, 4, 1)      # the CPU interpreter: small tiles, any dtype
_COMBINE_BLOCKS = (64, 128, 8)          # BLOCK_Q, BLOCK_V, warps


@triton.jit(do_not_specialize=['n_slots', 'n_splits', 'mk_sn', 'mk_ss', 'mv_sn', 'mv_ss'])
def _partial_read_kernel(mk_ptr, mv_ptr, count_ptr, n_read_ptr, qk_ptr, qcount_ptr, outside_ptr,
                         part_m_ptr, part_l_ptr, part_acc_ptr, n_slots, n_positions, key_dim,
                         value_dim, n_splits, scale, mk_sn, mk_ss, mk_sp, mv_sn, mv_ss, mv_sp,
                         qk_sn, qk_sp, KEY_PLANES: tl.constexpr, VALUE_PLANES: tl.constexpr,
                         ALIGNED: tl.constexpr,
                         TAIL_APART: tl.constexpr, KEY_BLOCK: tl.constexpr, BLOCK_Q: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    q_tile = tl.program_id(0)
    v_tile = tl.program_id(1)
    n = tl.program_id(2) // n_splits
    split = tl.program_id(2) % n_splits
    n_queries = tl.load(qcount_ptr + n).to(tl.int32)
    if q_tile * BLOCK_Q < n_queries:          # only query tiles holding in-region positions work
        _partial_read_tile(mk_ptr, mv_ptr, count_ptr, n_read_ptr, qk_ptr, outside_ptr,
                           part_m_ptr, part_l_ptr, part_acc_ptr, n_slots, n_positions, key_dim,
                           value_dim, n_splits, scale, mk_sn, mk_ss, mk_sp, mv_sn, mv_ss, mv_sp,
                           qk_sn, qk_sp, q_tile, v_tile, n, split, n_queries, KEY_PLANES, VALUE_PLANES,
                           ALIGNED,
                           TAIL_APART, KEY_BLOCK, BLOCK_Q, BLOCK_M, BLOCK_V)


@triton.jit
def _online_step(q, q_mid, q_low, key_base, value_base, start, n_inside, key_dim, value_dim, mk_sp,
                 mv_sp, offs_c, offs_v, c_valid, v_valid, m_i, l_i, acc, scale,
                 KEY_PLANES: tl.constexpr, VALUE_PLANES: tl.constexpr, TAIL: tl.constexpr,
                 BLOCK_M: tl.constexpr):
    """One memory tile of the online softmax; only the TAIL tile of a slot masks its positions."""
    offs_m = start + tl.arange(0, BLOCK_M)
    m_valid = offs_m < n_inside
    key_at = key_base + offs_m[None, :] * mk_sp + offs_c[:, None]
    key_mask = c_valid[:, None] & m_valid[None, :] if TAIL else c_valid[:, None]
    k = tl.load(key_at, mask=key_mask, other=0.0)
    s = tl.dot(q, k)
    if KEY_PLANES == 3:        # the products of planes whose ranks sum to at most 2: fp32's precision
        k_mid = tl.load(key_at + key_dim, mask=key_mask, other=0.0)
        k_low = tl.load(key_at + 2 * key_dim, mask=key_mask, other=0.0)
        s = tl.dot(q_mid, k, s)
        s = tl.dot(q, k_mid, s)
        s = tl.dot(q_low, k, s)
        s = tl.dot(q, k_low, s)
        s = tl.dot(q_mid, k_mid, s)
    if TAIL:
        s = tl.where(m_valid[None, :], s, float('-inf'))
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale)      # scores in base-2 units: s * scale
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    value_at = value_base + offs_m[:, None] * mv_sp + offs_v[None, :]
    value_mask = m_valid[:, None] & v_valid[None, :] if TAIL else v_valid[None, :]
    v = tl.load(value_at, mask=value_mask, other=0.0)
    if VALUE_PLANES == 2:      # p and v as high and low bf16 halves: three products
        v_low = tl.load(value_at + value_dim, mask=value_mask, other=0.0)
        p_high = p.to(v.dtype)
        p_low = (p - p_high.to(tl.float32)).to(v.dtype)
        acc = tl.dot(p_high, v, acc * alpha[:, None])
        acc = tl.dot(p_low, v, acc)
        acc = tl.dot(p_high, v_low, acc)
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _partial_read_tile(mk_ptr, mv_ptr, count_ptr, n_read_ptr, qk_ptr, outside_ptr,
                       part_m_ptr, part_l_ptr, part_acc_ptr, n_slots, n_positions, key_dim, value_dim,
                       n_splits, scale, mk_sn, mk_ss, mk_sp, mv_sn, mv_ss, mv_sp, qk_sn, qk_sp,
                       q_tile, v_tile, n, split, n_queries, KEY_PLANES: tl.constexpr,
                       VALUE_PLANES: tl.constexpr,
                       ALIGNED: tl.constexpr, TAIL_APART: tl.constexpr, KEY_BLOCK: tl.constexpr,
                       BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
    mk_sn, mk_ss, mv_sn, mv_ss = mk_sn.to(tl.int64), mk_ss.to(tl.int64), mv_sn.to(tl.int64), mv_ss.to(tl.int64)
    if ALIGNED:        # the host checked it: object and slot strides are multiples of 16 elements
        mk_sn, mk_ss = tl.multiple_of(mk_sn, 16), tl.multiple_of(mk_ss, 16)
        mv_sn, mv_ss = tl.multiple_of(mv_sn, 16), tl.multiple_of(mv_ss, 16)
    n_read = tl.load(n_read_ptr).to(tl.int32)
    per_split = (n_read + n_splits - 1) // n_splits
    first = split * per_split
    last = tl.minimum(n_read, first + per_split)

    offs_q = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_c = tl.arange(0, KEY_BLOCK)
    offs_v = v_tile * BLOCK_V + tl.arange(0, BLOCK_V)
    q_valid = offs_q < n_queries
    c_valid = offs_c < key_dim
    v_valid = offs_v < value_dim
    query_at = qk_ptr + n * qk_sn.to(tl.int64) + offs_q[:, None] * qk_sp + offs_c[None, :]
    query_mask = q_valid[:, None] & c_valid[None, :]
    q = tl.load(query_at, mask=query_mask, other=0.0)
    q_mid, q_low = q, q
    if KEY_PLANES == 3:
        q_mid = tl.load(query_at + key_dim, mask=query_mask, other=0.0)
        q_low = tl.load(query_at + 2 * key_dim, mask=query_mask, other=0.0)

    outside = tl.load(outside_ptr + n)
    virtual = (split == 0) & (outside > 0)
    m_i = tl.where(virtual, 0.0, _NO_SCORE) + tl.zeros((BLOCK_Q,), dtype=tl.float32)
    l_i = tl.where(split == 0, outside, 0.0) + tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_V), dtype=tl.float32)
    for slot in range(first, last):
        n_inside = tl.load(count_ptr + n * n_slots + slot).to(tl.int32)
        key_base = mk_ptr + n * mk_sn + slot * mk_ss         # strides are int64: no overflow
        value_base = mv_ptr + n * mv_sn + slot * mv_ss
        n_full = 0
        if TAIL_APART:       # whole tiles without the position mask, then the masked tail tile
            n_full = n_inside // BLOCK_M * BLOCK_M
            for start in range(0, n_full, BLOCK_M):
                m_i, l_i, acc = _online_step(q, q_mid, q_low, key_base, value_base, start, n_inside,
                                             key_dim, value_dim, mk_sp, mv_sp, offs_c, offs_v, c_valid,
                                             v_valid, m_i, l_i, acc, scale, KEY_PLANES, VALUE_PLANES,
                                             False, BLOCK_M)
        for start in range(n_full, n_inside, BLOCK_M):      # the tail tile, or every tile
            m_i, l_i, acc = _online_step(q, q_mid, q_low, key_base, value_base, start, n_inside, key_dim,
                                         value_dim, mk_sp, mv_sp, offs_c, offs_v, c_valid, v_valid, m_i,
                                         l_i, acc, scale, KEY_PLANES, VALUE_PLANES, True, BLOCK_M)

    n_objects = tl.num_programs(2) // n_splits
    row = ((split * n_objects + n) * n_positions + offs_q).to(tl.int64)
    tl.store(part_m_ptr + row, m_i, mask=q_valid & (v_tile == 0))
    tl.store(part_l_ptr + row, l_i, mask=q_valid & (v_tile == 0))
    tl.store(part_acc_ptr + row[:, None] * value_dim + offs_v[None, :], acc,
             mask=q_valid[:, None] & v_valid[None, :])


@triton.jit(do_not_specialize=['n_objects', 'n_splits'])
def _combine_kernel(part_m_ptr, part_l_ptr, part_acc_ptr, qcount_ptr, order_ptr, out_ptr,
                    n_objects, n_positions, value_dim, n_splits, order_sn, out_sn, out_sc,
                    BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr):
    q_tile = tl.program_id(0)
    v_tile = tl.program_id(1)
    n = tl.program_id(2)
    n_queries = tl.load(qcount_ptr + n).to(tl.int32)
    if q_tile * BLOCK_Q < n_queries:
        _combine_tile(part_m_ptr, part_l_ptr, part_acc_ptr, order_ptr, out_ptr, n_objects,
                      n_positions, value_dim, n_splits, order_sn, out_sn, out_sc, q_tile, v_tile, n,
                      n_queries, BLOCK_Q, BLOCK_V)


@triton.jit
def _combine_tile(part_m_ptr, part_l_ptr, part_acc_ptr, order_ptr, out_ptr, n_objects, n_positions,
                  value_dim, n_splits, order_sn, out_sn, out_sc, q_tile, v_tile, n, n_queries,
                  BLOCK_Q: tl.constexpr, BLOCK_V: tl.constexpr):
    offs_q = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_v = v_tile * BLOCK_V + tl.arange(0, BLOCK_V)
    q_valid = offs_q < n_queries
    v_valid = offs_v < value_dim
    m_all = tl.zeros((BLOCK_Q,), dtype=tl.float32) + _NO_SCORE
    l_all = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc_all = tl.zeros((BLOCK_Q, BLOCK_V), dtype=tl.float32)
    for split in range(0, n_splits):
        row = ((split * n_objects + n) * n_positions + offs_q).to(tl.int64)
        m_k = tl.load(part_m_ptr + row, mask=q_valid, other=_NO_SCORE)
        l_k = tl.load(part_l_ptr + row, mask=q_valid, other=0.0)
        acc_k = tl.load(part_acc_ptr + row[:, None] * value_dim + offs_v[None, :],
                        mask=q_valid[:, None] & v_valid[None, :], other=0.0)
        m_new = tl.maximum(m_all, m_k)
        old = tl.exp2(m_all - m_new)
        new = tl.exp2(m_k - m_new)
        l_all = l_all * old + l_k * new
        acc_all = acc_all * old[:, None] + acc_k * new[:, None]
        m_all = m_new
    read = acc_all / tl.where(l_all > 0, l_all, 1.0)[:, None]
    position = tl.load(order_ptr + n * order_sn + offs_q, mask=q_valid, other=0)
    tl.store(out_ptr + n * out_sn + offs_v[None, :] * out_sc + position[:, None],
             read.to(out_ptr.dtype.element_ty), mask=q_valid[:, None] & v_valid[None, :])


def aligned_slots(keys: torch.Tensor, values: torch.Tensor) -> bool:
    """Whether the kernel may load whole 16-byte vectors (cp.async) from every slot of these
    16-bit buffers: 16-byte aligned, object and slot strides multiples of 16 elements."""
    return (all(t.stride(d) % 16 == 0 for t in (keys, values) for d in (0, 1))
            and all(t.data_ptr() % 16 == 0 for t in (keys, values)))


def n_splits_for(n_objects: int, capacity: int, n_positions: int) -> int:
    """How many slot ranges one object's read is split into (fixed between reallocations)."""
    return max(1, min(_MAX_SPLITS, capacity, _SCRATCH_ROWS // max(1, n_objects * n_positions)))


def packed_read_triton(keys: torch.Tensor, values: torch.Tensor, slot_count: torch.Tensor,
                       n_read: torch.Tensor, query_keys: torch.Tensor, query_order: torch.Tensor,
                       query_count: torch.Tensor, outside: torch.Tensor, out: torch.Tensor,
                       planes: Tuple[int, int] = (1, 1), config: Optional[KernelConfig] = None,
                       tail_apart: bool = True) -> None:
    """Write the in-region queries' reads into `out` (N, Cv, P); other positions are kept.

    keys (N, S, P, Ck), values (N, S, P, Cv): the packed slots, bf16 or fp16; slot_count (N, S)
    int32 and n_read (1,): integer tensors; query_keys (N, P, Ck) packed, same dtype as keys;
    query_order (N, P) int64; query_count (N,) int32; outside (N,) fp32: the out-of-region
    memory positions. planes: (3, 2) for an fp32 memory stored as bf16 planes
    (models.packed_memory.to_planes; keys, values and query keys then hold 3 Ck, 2 Cv and 3 Ck
    channels). config: tile sizes, DEFAULT_CONFIGS of the memory's precision when None.
    tail_apart: run a slot's whole memory tiles unmasked and its last partial tile apart.
    """
    if values.dtype != keys.dtype or query_keys.dtype != keys.dtype:
        raise ValueError(f'keys, values and query keys differ in dtype: {keys.dtype}, {values.dtype}, '
                         f'{query_keys.dtype}')
    if keys.element_size() != 2 and not knobs.runtime.interpret:   # its exact numpy dots may take fp32
        raise ValueError(f'the kernel reads 16-bit memories (fp32 as bf16 planes), got {keys.dtype}')
    if planes not in ((1, 1), (3, 2)) or (planes == (3, 2) and keys.dtype != torch.bfloat16):
        raise ValueError(f'planes must be (1, 1) or (3, 2) of bf16, got {planes} of {keys.dtype}')
    n, capacity, n_positions, key_dim = keys.shape
    key_dim //= planes[0]
    value_dim = values.shape[3] // planes[1]
    assert keys.stride(3) == 1 and values.stride(3) == 1 and query_keys.stride(2) == 1
    assert out.stride(2) == 1 and slot_count.is_contiguous() and query_order.stride(1) == 1
    n_splits = n_splits_for(n, capacity, n_positions)
    rows = n_splits * n * n_positions
    part_m = torch.empty(rows, device=keys.device, dtype=torch.float32)
    part_l = torch.empty(rows, device=keys.device, dtype=torch.float32)
    part_acc = torch.empty(rows, value_dim, device=keys.device, dtype=torch.float32)
    precision = torch.float32 if planes == (3, 2) else keys.dtype
    block_q, block_m, block_v, warps, stages = (_INTERPRETED_CONFIG if knobs.runtime.interpret else
                                                config or DEFAULT_CONFIGS[precision])
    grid = (triton.cdiv(n_positions, block_q), triton.cdiv(value_dim, block_v), n * n_splits)
    _partial_read_kernel[grid](
        keys, values, slot_count, n_read, query_keys, query_count, outside, part_m, part_l, part_acc,
        capacity, n_positions, key_dim, value_dim, n_splits, _LOG2E / math.sqrt(key_dim),
        keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1),
        values.stride(2), query_keys.stride(0), query_keys.stride(1),
        KEY_PLANES=planes[0], VALUE_PLANES=planes[1], ALIGNED=aligned_slots(keys, values),
        TAIL_APART=tail_apart, KEY_BLOCK=triton.next_power_of_2(key_dim),
        BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_V=block_v, num_warps=warps, num_stages=stages)
    block_q, block_v, warps = (32, 32, 4) if knobs.runtime.interpret else _COMBINE_BLOCKS
    _combine_kernel[(triton.cdiv(n_positions, block_q), triton.cdiv(value_dim, block_v), n)](
        part_m, part_l, part_acc, query_count, query_order, out, n, n_positions, value_dim, n_splits,
        query_order.stride(0), out.stride(0), out.stride(1), BLOCK_Q=block_q, BLOCK_V=block_v,
        num_warps=warps)
