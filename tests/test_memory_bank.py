"""The memory banks: one interface, the same reads, the same schedule of kept frames."""
import pytest
import torch

from models.memory_bank import MemoryBank
from models.packed_memory import PackedMemoryBank


def frame_entry(seed, n=2, key_dim=8, value_dim=6, height=4, width=5):
    g = torch.Generator().manual_seed(seed)
    region = (torch.rand(n, height, width, generator=g) > 0.4).float()
    return (torch.randn(n, key_dim, height, width, generator=g), torch.randn(n, value_dim, height, width, generator=g),
            region)


def query(seed):
    key, value, region = frame_entry(100 + seed)
    return key, value, region


@pytest.mark.parametrize('max_frames', [0, 2])
def test_dense_and_packed_banks_read_the_same_kept_frames(max_frames):
    """Every other frame is kept (frame 0 and frame 6 pinned); a bounded memory drops the oldest
    unpinned frame once it holds more than max_frames of them, in both banks alike."""
    dense, packed = MemoryBank(max_frames), PackedMemoryBank(expected_frames=2, max_frames=max_frames)
    pinned_frames = {0, 6}
    kept = []
    for t in range(12):
        for bank in (dense, packed):
            bank.write_latest(*frame_entry(t))
        out, expected = packed.read(*query(t)), dense.read(*query(t))
        assert out.shape == expected.shape == (2, 12, 4, 5)
        assert torch.allclose(out, expected, atol=1e-5), t
        if t % 2 == 0:
            for bank in (dense, packed):
                bank.keep(pinned=t in pinned_frames)
            kept.append(t)
    unpinned = [t for t in kept if t not in pinned_frames]
    expected_kept = len(kept) if not max_frames else len(pinned_frames) + min(max_frames, len(unpinned))
    assert len(dense) == len(packed) == expected_kept
    if max_frames:
        assert dense.pinned == [True, True, False, False]      # frames 0, 6, 8, 10


def test_dense_bank_keeps_the_pinned_and_the_most_recent_frames():
    bank = MemoryBank(max_frames=1)
    for t in range(4):
        bank.write_latest(*frame_entry(t))
        bank.keep(pinned=t == 1)
    kept_keys = torch.stack(bank.keys)
    assert torch.equal(kept_keys, torch.stack([frame_entry(1)[0], frame_entry(3)[0]]))
