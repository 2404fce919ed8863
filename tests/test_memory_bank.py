"""The memory banks: one interface, the same reads, the same schedule of kept frames."""
import pytest
import torch

from models.memory_bank import MemoryBank, StaticMemoryBank


def frame_entry(seed, n=2, key_dim=8, value_dim=6, height=4, width=5):
    g = torch.Generator().manual_seed(seed)
    region = (torch.rand(n, height, width, generator=g) > 0.4).float()
    return (torch.randn(n, key_dim, height, width, generator=g), torch.randn(n, value_dim, height, width, generator=g),
            region)


def query(seed):
    key, value, region = frame_entry(100 + seed)
    return key, value, region


@pytest.mark.parametrize('regional', [False, True])
def test_every_bank_reads_the_kept_frames_and_the_latest(regional):
    reference = MemoryBank(regional_read=False)
    bank = StaticMemoryBank(expected_frames=2) if regional else MemoryBank(regional_read=True)
    reallocations = []
    for t in range(6):
        reallocations.append(bank.will_reallocate())
        for b in (reference, bank):
            b.write_latest(*frame_entry(t))
        out, expected = bank.read(*query(t)), reference.read(*query(t))
        assert out.shape == (2, 12, 4, 5)
        assert torch.allclose(out, expected, atol=1e-5)
        if t % 2 == 0:
            for b in (reference, bank):
                b.keep(pinned=t == 0)
    assert len(bank) == len(reference) == 3 and bank.pinned == [True, False, False]
    if regional:             # capacity 2, then 3 for the third frame, then 5 for the fourth
        assert reallocations == [True, False, False, True, False, True]
        assert bank.capacity == 5
