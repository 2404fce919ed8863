"""The regional memory read as one Triton kernel (GPU): only region tiles are touched.

Each program takes one object, a tile of query positions and a slice of the value channels.
Query tiles with no position inside the query region write the plain average of the values;
the others run an online softmax over the memory tiles that hold region positions (tiles
without any are skipped), starting from the out-of-region positions as one virtual block of
score 0: running max 0 and denominator equal to their count. The result is the published
dense read (see models.memory_read) up to rounding. Whether it runs is decided by
models.memory_read.
"""
import math
from typing import Optional

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton ships with CUDA builds of PyTorch; CPU-only installs may lack it
    triton = None

TRITON_IMPORTED = triton is not None

_CONFIGS = [(64, 64, 128, 4), (64, 64, 256, 8), (128, 64, 128, 8), (64, 128, 128, 8)]


if triton is not None:
    @triton.autotune(configs=[triton.Config({'BLOCK_Q': q, 'BLOCK_M': m, 'BLOCK_V': v}, num_warps=w, num_stages=2)
                              for q, m, v, w in _CONFIGS],
                     key=['n_queries', 'value_dim', 'PRECISE'])
    @triton.jit(do_not_specialize=['mk_sn', 'mk_sc', 'mv_sn', 'mv_sc', 'mr_sn'])
    def _regional_read_kernel(mk_ptr, mv_ptr, mr_ptr, qk_ptr, qr_ptr, uniform_ptr, outside_ptr, count_ptr,
                              out_ptr, n_queries, value_dim, scale,
                              mk_sn, mk_sc, mk_sp, mv_sn, mv_sc, mv_sp, mr_sn, mr_sp,
                              qk_sn, qk_sc, qk_sq, qr_sn, qr_sq, out_sn, out_sc, out_sq,
                              KEY_DIM: tl.constexpr, PRECISE: tl.constexpr, BLOCK_Q: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr):
        q_tile = tl.program_id(0)
        n = tl.program_id(1)
        v_tile = tl.program_id(2)
        n_positions = tl.load(count_ptr) * n_queries
        offs_q = q_tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_v = v_tile * BLOCK_V + tl.arange(0, BLOCK_V)
        offs_c = tl.arange(0, KEY_DIM)
        q_valid = offs_q < n_queries
        q_in = tl.load(qr_ptr + n * qr_sn + offs_q * qr_sq, mask=q_valid, other=0) > 0
        uniform = tl.load(uniform_ptr + n * value_dim + offs_v)
        result = tl.zeros((BLOCK_Q, BLOCK_V), dtype=tl.float32) + uniform[None, :]
        if tl.max(q_in.to(tl.int32), axis=0) > 0:
            q = tl.load(qk_ptr + n * qk_sn + offs_q[:, None] * qk_sq + offs_c[None, :] * qk_sc,
                        mask=q_valid[:, None], other=0.0)
            outside = tl.load(outside_ptr + n)
            m_i = tl.where(outside > 0, 0.0, float('-inf')) + tl.zeros((BLOCK_Q,), dtype=tl.float32)
            l_i = outside + tl.zeros((BLOCK_Q,), dtype=tl.float32)
            acc = tl.zeros((BLOCK_Q, BLOCK_V), dtype=tl.float32)
            for start in range(0, n_positions, BLOCK_M):
                offs_m = start + tl.arange(0, BLOCK_M)
                m_valid = offs_m < n_positions
                m_in = tl.load(mr_ptr + n * mr_sn + offs_m * mr_sp, mask=m_valid, other=0) > 0
                if tl.max(m_in.to(tl.int32), axis=0) > 0:
                    k = tl.load(mk_ptr + n * mk_sn + offs_c[:, None] * mk_sc + offs_m[None, :] * mk_sp,
                                mask=m_valid[None, :], other=0.0)
                    if PRECISE:
                        s = tl.dot(q, k, input_precision='tf32x3')
                    else:
                        s = tl.dot(q, k)
                    s = tl.where(m_in[None, :], s * scale, float('-inf'))
                    m_new = tl.maximum(m_i, tl.max(s, axis=1))
                    alpha = tl.exp(m_i - m_new)
                    p = tl.exp(s - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(p, axis=1)
                    v = tl.load(mv_ptr + n * mv_sn + offs_m[:, None] * mv_sp + offs_v[None, :] * mv_sc,
                                mask=m_valid[:, None], other=0.0)
                    if PRECISE:
                        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision='tf32x3')
                    else:
                        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                    m_i = m_new
            read = tl.where(l_i[:, None] > 0, acc / l_i[:, None], 0.0)
            result = tl.where(q_in[:, None], read, result)
        tl.store(out_ptr + n * out_sn + offs_v[None, :] * out_sc + offs_q[:, None] * out_sq,
                 result.to(out_ptr.dtype.element_ty), mask=q_valid[:, None])


def regional_attention_triton(memory_keys: torch.Tensor, memory_values: torch.Tensor,
                              memory_regions: torch.Tensor, query_key: torch.Tensor,
                              query_value: torch.Tensor, query_region: torch.Tensor,
                              n_frames: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Same arguments and result as models.memory_read.read_memory_regional_torch.

    n_frames: a one-element int32 CUDA tensor, the number of leading memory frames to read
    (the rest of a preallocated bank is ignored); None reads them all. Nothing here waits for
    the GPU, so the call can be captured in a CUDA graph.
    """
    n, key_dim, capacity, height, width = memory_keys.shape
    value_dim = memory_values.shape[1]
    n_queries = height * width
    mk = memory_keys.reshape(n, key_dim, capacity * n_queries)
    mv = memory_values.reshape(n, value_dim, capacity * n_queries)
    mr = memory_regions.reshape(n, capacity * n_queries)
    qk = query_key.reshape(n, key_dim, n_queries).to(mk.dtype)
    qr = query_region.reshape(n, n_queries)
    if n_frames is None:
        n_frames = torch.full((1,), capacity, dtype=torch.int32, device=mk.device)
    n_positions = n_frames.to(torch.float32) * n_queries
    # sums over the bank in its own dtype (no float copy of it: memory grows only with the bank)
    region_sum = torch.bmm(mv, mr.to(mv.dtype).unsqueeze(2)).squeeze(2).float()
    uniform = (region_sum / n_positions).contiguous()
    outside = (n_positions - mr.float().sum(dim=1)).contiguous()
    precise = mk.dtype == torch.float32
    out = torch.empty(n, value_dim, n_queries, device=mk.device, dtype=query_value.dtype)

    def grid(meta):
        return triton.cdiv(n_queries, meta['BLOCK_Q']), n, value_dim // meta['BLOCK_V']

    _regional_read_kernel[grid](
        mk, mv, mr, qk, qr, uniform, outside, n_frames, out, n_queries, value_dim,
        1.0 / math.sqrt(key_dim), *mk.stride(), *mv.stride(), *mr.stride(), *qk.stride(),
        *qr.stride(), *out.stride(), KEY_DIM=key_dim, PRECISE=precise)
    read = out.view(n, value_dim, height, width)
    return torch.cat([read, query_value * query_region[:, None].to(query_value.dtype)], dim=1)
