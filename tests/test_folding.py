"""BatchNorm folding keeps the function of the encoders."""
import pytest
import torch

from config import cfg
from models.folding import ConvReLU, FoldedBottleneck, fold_batch_norms
from models.rmnet import RMNet


@torch.no_grad()
def test_folded_encoders_compute_the_same_function():
    torch.manual_seed(0)
    net = RMNet(cfg).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    folded = fold_batch_norms(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())   # original untouched
    assert sum(isinstance(m, FoldedBottleneck) for m in folded.modules()) == 2 * (3 + 4 + 6)
    frame, mask, others = torch.randn(2, 3, 64, 96), torch.rand(2, 1, 64, 96), torch.rand(2, 1, 64, 96)
    expected = net.encoder_memory(frame, mask, others)
    assert torch.allclose(folded.encoder_memory(frame, mask, others), expected, atol=1e-4 * expected.abs().max())
    for a, b in zip(net.encoder_query(frame), folded.encoder_query(frame)):
        assert torch.allclose(a, b, atol=1e-4 * a.abs().max())
    twice = fold_batch_norms(folded)
    assert list(twice.state_dict()) == list(folded.state_dict())
    for a, b in zip(folded.state_dict().values(), twice.state_dict().values()):
        assert torch.equal(a, b)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


@needs_gpu
@torch.no_grad()
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_fused_conv_relu_equals_its_operations_one_after_another_on_the_gpu(dtype):
    torch.manual_seed(0)
    conv = ConvReLU(64, 96, 3, padding=1, stride=2).cuda()
    conv.bias.uniform_(-1, 1)                 # large enough that a lost bias shows
    conv = conv.to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(2, 64, 30, 54, device='cuda', dtype=dtype).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 96, 15, 27, device='cuda', dtype=dtype).contiguous(memory_format=torch.channels_last)
    for shortcut in (None, residual):
        fused, plain = conv.fused_forward(x, shortcut), conv.unfused_forward(x, shortcut)
        assert fused.dtype == plain.dtype == dtype
        assert fused.min() >= 0
        tolerance = (2e-2 if dtype == torch.bfloat16 else 2e-3) * plain.abs().max()
        assert torch.allclose(fused.float(), plain.float(), atol=tolerance)
        assert abs(float((fused == 0).float().mean() - (plain == 0).float().mean())) < 0.01


@needs_gpu
@torch.no_grad()
def test_folded_encoders_on_the_gpu_fused_or_not():
    torch.manual_seed(0)
    net = RMNet(cfg).eval()
    folded = fold_batch_norms(net).cuda().to(torch.bfloat16).to(memory_format=torch.channels_last)
    frame = torch.randn(2, 3, 96, 160, device='cuda', dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert ConvReLU.fused
    fused = folded.encoder_query(frame)
    try:
        ConvReLU.fused = False
        plain = folded.encoder_query(frame)
    finally:
        ConvReLU.fused = True
    for a, b in zip(fused, plain):
        assert torch.allclose(a.float(), b.float(), atol=3e-2 * b.float().abs().max())
