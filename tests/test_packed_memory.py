"""The packed memory bank reads what the published dense read gives, over the right frames."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models.packed_memory as packed_memory
from models.memory_read import read_memory_dense
from models.packed_memory import PackedMemoryBank, pack_order, read_packed_torch
from utils.cuda_graph import GraphedStep

ROOT = Path(__file__).resolve().parents[1]


def random_frame(g, t, n=3, key_dim=16, value_dim=40, height=6, width=9, device='cpu'):
    """Memory features of frame t: object 0 a moving box, 1 the whole frame, 2 a small box
    that is empty in every third frame."""
    key = torch.randn(n, key_dim, height, width, generator=g) * 0.6
    value = torch.randn(n, value_dim, height, width, generator=g)
    region = torch.zeros(n, height, width)
    region[0, t % 3:t % 3 + 3, 1 + t % 4:6 + t % 4] = 1
    region[1] = 1
    if t % 3 != 2:
        region[2, 3:, :2 + t % 2] = 1
    return key.to(device), value.to(device), region.to(device)


def random_query(g, n=3, key_dim=16, value_dim=40, height=6, width=9, device='cpu'):
    """Object 0: a box partly outside the memory boxes, 1: the whole frame, 2: no region."""
    key = torch.randn(n, key_dim, height, width, generator=g) * 0.6
    value = torch.randn(n, value_dim, height, width, generator=g)
    region = torch.zeros(n, height, width)
    region[0, 2:6, 4:9] = 1
    region[1] = 1
    return key.to(device), value.to(device), region.to(device)


def dense_read(frames, query):
    """The published read of the given memory frames (key, value, region) for the query."""
    keys = torch.stack([k * r[:, None] for k, _, r in frames], dim=2).float()
    values = torch.stack([v * r[:, None] for _, v, r in frames], dim=2).float()
    key, value, region = (x.float() for x in query)
    return read_memory_dense(keys, values, key * region[:, None], value * region[:, None])


class ReferenceMemory:
    """The schedule in plain lists: pinned frames, then the max_frames most recent others."""

    def __init__(self, max_frames):
        self.max_frames = max_frames
        self.pinned, self.recent, self.latest = [], [], None

    def keep(self, pinned):
        (self.pinned if pinned else self.recent).append(self.latest)
        if self.max_frames and len(self.recent) > self.max_frames:
            self.recent.pop(0)

    def frames(self):
        return self.pinned + self.recent + [self.latest]


def run_schedule(bank, steps, pinned_at, keep_every, seed=0, device='cpu', dtype=torch.float32):
    """Feeds frames to the bank and a ReferenceMemory; yields (read, dense read) per step."""
    g = torch.Generator().manual_seed(seed)
    reference = ReferenceMemory(bank.max_frames)
    for t in range(steps):
        frame = random_frame(g, t, device=device)
        query = random_query(g, device=device)
        reference.latest = frame
        bank.write_latest(frame[0].to(dtype), frame[1].to(dtype), frame[2])
        out = bank.read(query[0].to(dtype), query[1].to(dtype), query[2])
        yield t, out, dense_read(reference.frames(), query)
        if t in pinned_at or t % keep_every == 0:
            bank.keep(pinned=t in pinned_at)
            reference.keep(t in pinned_at)


def test_pack_order_puts_region_positions_first_in_frame_order():
    region = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    order, count = pack_order(region)
    assert count.tolist() == [3, 0, 6]
    assert order.tolist() == [[1, 3, 4, 0, 2, 5], list(range(6)), list(range(6))]


@pytest.mark.parametrize('seed', [0, 1])
def test_unbounded_read_equals_dense_and_grows(seed):
    bank = PackedMemoryBank(expected_frames=2)
    capacities = []
    for t, out, expected in run_schedule(bank, 12, pinned_at={0}, keep_every=2, seed=seed):
        assert (out - expected).abs().max() < 2e-6, t
        capacities.append(bank.capacity)
    assert len(bank) == 6                                   # frames 0, 2, 4, 6, 8, 10
    assert capacities == [2, 2, 2, 3, 3, 5, 5, 5, 5, 8, 8, 8]   # the hint, then 1.5x as needed


def test_three_bf16_planes_hold_fp32_exactly_and_two_within_2_to_the_minus_17():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4000, generator=g) * torch.logspace(-30, 30, 4000)
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1.0, -3.0e38, 1.17549435e-38 * 2 ** 20])])
    three = packed_memory.to_planes(x[None], 3)
    assert three.dtype == torch.bfloat16 and three.shape == (1, 3 * x.numel())
    assert torch.equal(packed_memory.from_planes(three, 3)[0], x)
    two = packed_memory.from_planes(packed_memory.to_planes(x[None], 2), 2)[0]
    assert ((two - x).abs() <= x.abs() * 2.0 ** -17).all()
    assert not torch.equal(two, x)                              # two planes do round


@pytest.mark.parametrize('max_frames', [0, 3])
def test_fp32_memory_in_bf16_planes_reads_as_the_dense_fp32_read(max_frames):
    """The layout the GPU kernel reads, through the PyTorch path: keys exact, values to 2^-17."""
    bank = PackedMemoryBank(expected_frames=2, max_frames=max_frames, fp32_planes=True)
    for t, out, expected in run_schedule(bank, 10, pinned_at={0}, keep_every=2, seed=3):
        assert out.dtype == torch.float32
        assert (out - expected).abs().max() < 2e-6, t
    assert bank.planes == (3, 2) and bank.keys.dtype == bank.values.dtype == torch.bfloat16
    assert bank.keys.shape[3] == 3 * 16 and bank.values.shape[3] == 2 * 40
    plain = PackedMemoryBank(expected_frames=2)
    for _ in run_schedule(plain, 1, pinned_at={0}, keep_every=2, seed=3):
        pass
    assert plain.planes == (1, 1) and plain.keys.dtype == torch.float32      # on the CPU: fp32 as it is


def test_region_fraction_is_the_mean_share_of_the_frames_read_inside_their_regions():
    g = torch.Generator().manual_seed(5)
    bank = PackedMemoryBank(expected_frames=4)
    assert bank.region_fraction() == 0.0
    frames = [random_frame(g, t) for t in range(4)]
    for frame in frames:
        bank.write_latest(*frame)
        if len(bank) < 3:
            bank.keep()
    # kept frames 0-2 and the latest, frame 3, are read
    expected = torch.stack([region for _, _, region in frames]).mean().item()
    assert 0.2 < expected < 0.8
    assert bank.region_fraction() == pytest.approx(expected)


def test_will_reallocate_exactly_when_the_buffers_are_full():
    g = torch.Generator().manual_seed(3)
    bank = PackedMemoryBank(expected_frames=3)
    assert bank.will_reallocate()                           # nothing allocated yet
    for t in range(8):
        full = len(bank) + 1 > bank.capacity
        assert bank.will_reallocate() == full
        before = bank.capacity
        bank.write_latest(*random_frame(g, t))
        assert (bank.capacity > before) == full
        bank.keep()
    assert bank.capacity == 8                                # the hint 3, then 5, then 8


@pytest.mark.parametrize('use_host_counts', [True, False])
def test_bounded_memory_keeps_pinned_and_the_most_recent_frames(use_host_counts, monkeypatch):
    """use_host_counts False: the padded computation that a CUDA graph captures, on the CPU."""
    full_read = packed_memory.read_packed_torch
    monkeypatch.setattr(packed_memory, 'read_packed_torch',
                        lambda *args, host_counts, **kw: full_read(*args, host_counts=use_host_counts, **kw))
    bank = PackedMemoryBank(expected_frames=50, max_frames=3)
    capacities = set()
    for t, out, expected in run_schedule(bank, 30, pinned_at={0, 7}, keep_every=1, seed=4):
        assert (out - expected).abs().max() < 2e-6, t
        if t > 8:
            capacities.add(bank.capacity)
    assert len(bank) == 2 + 3
    assert capacities == {7}                    # 2 pinned + 3 recent + the latest + room for a pinned
    assert not bank.will_reallocate()


def test_bounded_memory_evicts_in_keep_order():
    g = torch.Generator().manual_seed(5)
    bank = PackedMemoryBank(max_frames=2)
    slots = []
    for t in range(7):
        bank.write_latest(*random_frame(g, t))
        slots.append(int(bank.latest_slot))
        bank.keep(pinned=t == 0)
    # frame 0 is pinned in slot 0 and frames 1, 2, 3 fill slots 1, 2, 3; keeping frame 3
    # evicts frame 1, so frame 4 takes slot 1, then frame 5 slot 2 (frame 2's), frame 6 slot 3
    assert slots == [0, 1, 2, 3, 1, 2, 3]


def test_triton_failure_falls_back_with_one_warning(monkeypatch, caplog):
    calls = []

    def failing_kernel(*args, **kwargs):
        calls.append(1)
        raise RuntimeError('no kernel')

    monkeypatch.setattr(packed_memory, 'packed_read_triton', failing_kernel)
    monkeypatch.setattr(packed_memory, 'triton_enabled',
                        lambda tensor: not PackedMemoryBank.triton_failed)
    monkeypatch.setattr(PackedMemoryBank, 'triton_failed', False)
    bank = PackedMemoryBank()
    with caplog.at_level(logging.WARNING, logger='models.packed_memory'):
        for t, out, expected in run_schedule(bank, 4, pinned_at={0}, keep_every=1, seed=6):
            assert (out - expected).abs().max() < 2e-6
    assert len(calls) == 1
    assert len([r for r in caplog.records if 'Triton memory read failed' in r.message]) == 1


def test_an_fp32_bank_without_planes_reads_with_pytorch_and_leaves_the_kernel_on(monkeypatch):
    """The kernel reads fp32 only as planes; a plain fp32 bank is not a kernel failure."""
    def kernel(*args, **kwargs):
        raise AssertionError('the kernel was called')

    monkeypatch.setattr(packed_memory, 'packed_read_triton', kernel)
    monkeypatch.setattr(packed_memory, 'triton_enabled', lambda tensor: not PackedMemoryBank.triton_failed)
    monkeypatch.setattr(PackedMemoryBank, 'triton_failed', False)
    bank = PackedMemoryBank(fp32_planes=False)
    for t, out, expected in run_schedule(bank, 3, pinned_at={0}, keep_every=1, seed=2):
        assert (out - expected).abs().max() < 2e-6
    assert bank.planes == (1, 1) and not PackedMemoryBank.triton_failed


def kernel_and_torch_reads(kernel, keys, values, bank, query_key, query_region, outside):
    """The reads of `kernel` and of the PyTorch path for the packed query (in the bank's planes),
    both into outputs filled with 9 first (positions out of the query's region must keep it)."""
    order, count = pack_order(query_region.flatten(1))
    query_keys = bank.as_stored(packed_memory.pack_positions(query_key, order), bank.planes[0]).contiguous()
    args = (keys, values, bank.slot_count, bank.n_read, query_keys, order, count, outside)
    n, value_dim = values.shape[0], values.shape[3] // bank.planes[1]
    ours = torch.full((n, value_dim, order.shape[1]), 9.0, device=keys.device, dtype=query_key.dtype)
    reference = ours.clone()
    kernel(*args, ours, planes=bank.planes)
    read_packed_torch(*args, reference, host_counts=False, planes=bank.planes)
    return ours, reference


def interpreter_case(kernel):
    """The kernel's and the PyTorch path's reads (padded, as on a GPU) of a bounded bank after
    evictions and of a bank with more memory splits than frames; the largest difference."""
    bounded, spare = PackedMemoryBank(max_frames=3), PackedMemoryBank(expected_frames=12)
    for _ in run_schedule(bounded, 9, pinned_at={0}, keep_every=2, seed=7):
        pass
    for _ in run_schedule(spare, 3, pinned_at={0}, keep_every=1, seed=8):
        pass
    g = torch.Generator().manual_seed(9)
    query_key, _, query_region = random_query(g)
    outside = torch.tensor([30.0, 0.0, 7.0])
    difference, untouched = 0.0, True
    for bank in (bounded, spare):
        ours, reference = kernel_and_torch_reads(kernel, bank.keys, bank.values, bank, query_key, query_region,
                                                 outside)
        difference = max(difference, float((ours - reference).abs().max()))
        untouched = untouched and bool((ours[2] == 9.0).all())
    return difference, untouched


INTERPRETED = """
import functools, sys
sys.path[:0] = sys.argv[1:]
from models.packed_read_triton import packed_read_triton
from test_packed_memory import interpreter_case
for tail_apart in (False, True):
    print(*interpreter_case(functools.partial(packed_read_triton, tail_apart=tail_apart)))
"""


def test_triton_kernel_in_the_interpreter_equals_the_pytorch_path():
    """Plain fp32 memories (the interpreter has no bf16 dot, so no planes: those are tested on the
    GPU), with and without the tail tile apart. Triton must be imported in interpreter mode,
    hence a separate process."""
    triton = pytest.importorskip('triton')
    if tuple(int(part) for part in triton.__version__.split('.')[:2]) < (3, 8):
        pytest.skip(f'Triton {triton.__version__}: interpreters before 3.8 (seen in 3.6) cannot bound a loop by a '
                    'loaded count (the kernel itself is tested on the GPU)')
    env = dict(os.environ, TRITON_INTERPRET='1')
    result = subprocess.run([sys.executable, '-c', INTERPRETED, str(ROOT), str(ROOT / 'tests')],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():                 # every tile masked; the tail tile apart
        difference, untouched = line.split()
        assert float(difference) < 1e-5
        assert untouched == 'True'                           # no query region: left as it was
    assert len(result.stdout.splitlines()) == 2


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')


def gpu_memory(seed, frames, n=2, key_dim=128, value_dim=512, height=30, width=54):
    g = torch.Generator().manual_seed(seed)
    memory = []
    for t in range(frames):
        key = torch.randn(n, key_dim, height, width, generator=g) * 0.15
        value = torch.randn(n, value_dim, height, width, generator=g)
        region = torch.zeros(n, height, width)
        region[0, 5 + t % 4:17 + t % 4, 10:30] = 1
        region[1] = 1 if t % 2 else 0
        memory.append((key.cuda(), value.cuda(), region.cuda()))
    key = torch.randn(n, key_dim, height, width, generator=g) * 0.15
    value = torch.randn(n, value_dim, height, width, generator=g)
    region = torch.zeros(n, height, width)
    region[0, 8:22, 14:40] = 1
    region[1, :, :20] = 1
    return memory, (key.cuda(), value.cuda(), region.cuda())


def filled_bank(memory, dtype):
    bank = PackedMemoryBank(expected_frames=len(memory))
    for key, value, region in memory[:-1]:
        bank.write_latest(key.to(dtype), value.to(dtype), region)
        bank.keep()
    key, value, region = memory[-1]
    bank.write_latest(key.to(dtype), value.to(dtype), region)
    return bank


@cuda
@pytest.mark.parametrize('frames', [1, 13, 40])
def test_triton_equals_pytorch_path_and_dense_on_the_gpu(frames, monkeypatch):
    assert packed_memory.triton_enabled(torch.zeros(1, device='cuda'))
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)   # an fp32 reference
    memory, query = gpu_memory(frames, frames)
    expected = dense_read(memory, query)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 0.05)):
        bank = filled_bank(memory, dtype)
        low = [x.to(dtype) for x in query[:2]] + [query[2]]
        triton_out = bank.read(*low).float()
        monkeypatch.setenv('RMNET_NO_TRITON', '1')
        torch_out = bank.read(*low).float()
        monkeypatch.delenv('RMNET_NO_TRITON')
        assert (triton_out - expected).abs().max() < tolerance, (dtype, frames)
        assert (torch_out - expected).abs().max() < tolerance, (dtype, frames)
        assert (triton_out - torch_out).abs().max() < tolerance, (dtype, frames)
    assert not PackedMemoryBank.triton_failed


@cuda
def test_fp32_kernel_is_as_precise_as_an_fp32_matmul_on_peaked_scores(monkeypatch):
    """Keys 20 times those of gpu_memory: scores spread over tens, a peaked softmax, where keys
    in two planes would err about ten times more than an fp32 matmul. The bf16 planes read
    errs no more than the dense fp32 read (strict fp32 matmuls) against a float64 reference."""
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    memory, query = gpu_memory(11, 20)
    memory = [(key * 20, value, region) for key, value, region in memory]
    query = (query[0] * 20, query[1], query[2])
    keys = torch.stack([k * r[:, None] for k, _, r in memory], dim=2)
    values = torch.stack([v * r[:, None] for _, v, r in memory], dim=2)
    key, value, region = query
    exact = read_memory_dense(keys.double(), values.double(), (key * region[:, None]).double(),
                              (value * region[:, None]).double())
    fp32 = read_memory_dense(keys, values, key * region[:, None], value * region[:, None])
    bank = filled_bank(memory, torch.float32)
    assert bank.planes == (3, 2)
    ours = bank.read(*query)
    assert not PackedMemoryBank.triton_failed
    fp32_error = float((fp32 - exact).abs().max())
    assert 0 < float((ours - exact).abs().max()) <= 2 * fp32_error + 1e-7, fp32_error


def whole_tiles_case(aligned: bool, device: str, dtype=torch.bfloat16) -> float:
    """bf16 slots whose in-region counts are whole memory tiles (128 and 64 positions: no tail
    tile) read by the kernel and by the PyTorch path; unaligned, the same memory copied to
    buffers starting 4 elements into their storage (no alignment hints). Largest difference."""
    from models.packed_read_triton import aligned_slots, packed_read_triton
    g = torch.Generator().manual_seed(5)
    n, height, width = 2, 16, 24
    memory = []
    for t in range(7):
        key = torch.randn(n, 128, height, width, generator=g) * 0.15
        value = torch.randn(n, 512, height, width, generator=g)
        region = torch.zeros(n, height, width)
        region[0, :8, :16] = 1
        region[1, 4:8, t:t + 16] = 1
        memory.append((key.to(device), value.to(device), region.to(device)))
    bank = filled_bank(memory, dtype)
    keys, values = bank.keys, bank.values
    if not aligned:
        def shifted(tensor):
            storage = torch.empty(tensor.numel() + 4, dtype=tensor.dtype, device=device)
            view = storage[4:].view(tensor.shape)
            view.copy_(tensor)
            return view
        keys, values = shifted(keys), shifted(values)
    assert aligned_slots(keys, values) == aligned
    query_key = (torch.randn(n, 128, height, width, generator=g) * 0.15).to(device, dtype)
    query_region = torch.zeros(n, height, width, device=device)
    query_region[0, 2:10, 3:19] = 1
    query_region[1] = 1
    outside = torch.tensor([50.0, 0.0], device=device)
    ours, reference = kernel_and_torch_reads(packed_read_triton, keys, values, bank, query_key, query_region,
                                             outside)
    return float((ours.float() - reference.float()).abs().max())


@cuda
@pytest.mark.parametrize('dtype,tolerance', [(torch.bfloat16, 0.05), (torch.float32, 1e-5)])
@pytest.mark.parametrize('aligned', [True, False])
def test_whole_memory_tiles_and_unaligned_buffers_read_as_the_pytorch_path_on_the_gpu(aligned, dtype, tolerance):
    assert whole_tiles_case(aligned, 'cuda', dtype) < tolerance


def _candidates():
    from models.packed_read_triton import CANDIDATE_CONFIGS
    return [(dtype, config) for dtype in (torch.float32, torch.bfloat16) for config in CANDIDATE_CONFIGS[dtype]]


@cuda
@pytest.mark.parametrize('dtype,config', _candidates() if torch.cuda.is_available() else [])
def test_every_candidate_tile_config_equals_the_dense_read_on_the_gpu(dtype, config, monkeypatch):
    """Any tile sizes of the sweep may become the default: each computes the published read."""
    import models.packed_read_triton as kernel
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)   # an fp32 reference
    monkeypatch.setitem(kernel.DEFAULT_CONFIGS, dtype, config)
    memory, query = gpu_memory(7, 9)
    expected = dense_read(memory, query)
    bank = filled_bank(memory, dtype)
    out = bank.read(*[x.to(dtype) for x in query[:2]], query[2]).float()
    assert not PackedMemoryBank.triton_failed
    assert (out - expected).abs().max() < (1e-5 if dtype == torch.float32 else 0.05), config


@cuda
@pytest.mark.parametrize('no_triton', ['', '1'])
@pytest.mark.parametrize('max_frames', [0, 4])
def test_bank_in_a_cuda_graph_replays_keeps_and_evictions(no_triton, max_frames, monkeypatch):
    monkeypatch.setenv('RMNET_NO_TRITON', no_triton)
    g = torch.Generator().manual_seed(9)
    frames = [random_frame(g, t, device='cuda') for t in range(30)]
    queries = [random_query(g, device='cuda') for _ in range(30)]
    frame_in = [x.clone() for x in frames[0]]
    query_in = [x.clone() for x in queries[0]]
    captured = PackedMemoryBank(expected_frames=3, max_frames=max_frames)
    eager = PackedMemoryBank(expected_frames=3, max_frames=max_frames)

    def step():
        captured.write_latest(*frame_in)
        return captured.read(*query_in)

    graphed = GraphedStep(step)
    recaptures = 0
    for t in range(30):
        for buffer, x in zip(frame_in + query_in, frames[t] + queries[t]):
            buffer.copy_(x)
        if captured.will_reallocate():
            graphed.reset()
            recaptures += 1
        out = graphed().clone()
        eager.write_latest(*frames[t])
        expected = eager.read(*queries[t])
        assert (out - expected).abs().max() < 1e-5, t
        if t % 2 == 0 or t == 5:
            captured.keep(pinned=t in (0, 5))
            eager.keep(pinned=t in (0, 5))
    # capacities 3, 5, 8, 12, 18 unbounded; bounded 3, 5, 8 (2 pinned + 4 recent + latest fit)
    assert recaptures == (5 if max_frames == 0 else 3)
