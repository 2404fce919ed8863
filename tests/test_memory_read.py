"""The regional memory reads equal the published dense read (PyTorch paths; Triton on a GPU)."""
import pytest
import torch

from models import memory_read
from models.memory_read import (read_memory_dense, read_memory_regional, read_memory_regional_masked,
                                read_memory_regional_torch, triton_enabled)
from models.regional_attention_triton import regional_attention_triton


def random_memory(seed, n=3, key_dim=128, value_dim=512, frames=4, height=9, width=14):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, key_dim, frames, height, width, generator=g) * 0.15
    values = torch.randn(n, value_dim, frames, height, width, generator=g)
    query_key = torch.randn(n, key_dim, height, width, generator=g) * 0.15
    query_value = torch.randn(n, value_dim, height, width, generator=g)
    regions = torch.zeros(n, frames, height, width)
    regions[0, :, 2:7, 3:11] = 1                      # boxes in every frame
    regions[1] = 1                                    # whole frames: nothing outside
    regions[2, frames // 2, 5:, :4] = 1                # only one frame has a region
    query_region = torch.zeros(n, height, width)
    query_region[0, 1:5, 4:12] = 1
    query_region[1] = 1
    query_region[2, 8:, 10:] = 1
    return keys, values, regions, query_key, query_value, query_region


def dense(keys, values, regions, query_key, query_value, query_region):
    inside, query_inside = regions[:, None], query_region[:, None]
    return read_memory_dense(keys * inside, values * inside, query_key * query_inside, query_value * query_inside)


@pytest.mark.parametrize('seed', [0, 1])
def test_regional_torch_equals_dense(seed):
    memory = random_memory(seed)
    expected = dense(*memory)
    assert torch.allclose(read_memory_regional_torch(*memory), expected, atol=2e-6, rtol=1e-5)


def test_masked_read_of_a_preallocated_buffer_ignores_frames_beyond_the_count():
    memory = random_memory(3, frames=3)
    expected = dense(*memory)
    keys, values, regions, query_key, query_value, query_region = memory
    spare = (torch.randn_like(keys[:, :, :2]), torch.randn_like(values[:, :, :2]), torch.ones_like(regions[:, :2]))
    buffer = (torch.cat([keys, spare[0]], 2), torch.cat([values, spare[1]], 2), torch.cat([regions, spare[2]], 1))
    count = torch.tensor([3], dtype=torch.int32)
    out = read_memory_regional_masked(*buffer, query_key, query_value, query_region, count)
    assert torch.allclose(out, expected, atol=2e-6, rtol=1e-5)


def test_without_triton_the_regional_read_runs_pytorch(monkeypatch):
    monkeypatch.setenv('RMNET_NO_TRITON', '1')
    assert not triton_enabled(torch.device('cuda'))
    monkeypatch.delenv('RMNET_NO_TRITON')
    monkeypatch.setattr(memory_read, '_triton_failed', True)
    assert not triton_enabled(torch.device('cuda'))
    memory = random_memory(4)
    assert torch.allclose(read_memory_regional(*memory), dense(*memory), atol=2e-6, rtol=1e-5)


def test_query_outside_its_region_reads_the_plain_average():
    keys, values, regions, query_key, query_value, query_region = random_memory(2)
    out = read_memory_regional_torch(keys, values, regions, query_key, query_value, query_region)
    average = (values[2] * regions[2][None]).flatten(1).mean(dim=1)
    assert torch.allclose(out[2, :512, 0, 0], average, atol=1e-6)
    assert out[2, 512:, 0, 0].abs().max() == 0              # query value is zero outside too


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_triton_kernel_equals_dense_on_the_gpu():
    assert triton_enabled(torch.device('cuda'))
    for seed, (frames, height, width) in enumerate([(4, 9, 14), (15, 30, 54), (1, 30, 54), (7, 23, 41)]):
        memory = [t.cuda() for t in random_memory(seed, frames=frames, height=height, width=width)]
        expected = dense(*memory)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            out = regional_attention_triton(*memory)
        assert (out - expected).abs().max() < 1e-5, (frames, height, width)
        low = [t.to(torch.bfloat16) if t.is_floating_point() else t for t in memory]
        out_bf16 = regional_attention_triton(*low).float()
        assert (out_bf16 - expected).abs().max() < 0.05, (frames, height, width)
