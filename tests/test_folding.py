"""BatchNorm folding keeps the function of the encoders."""
import torch

from config import cfg
from models.folding import fold_batch_norms
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
    frame, mask, others = torch.randn(2, 3, 64, 96), torch.rand(2, 1, 64, 96), torch.rand(2, 1, 64, 96)
    expected = net.encoder_memory(frame, mask, others)
    assert torch.allclose(folded.encoder_memory(frame, mask, others), expected, atol=1e-4 * expected.abs().max())
    for a, b in zip(net.encoder_query(frame), folded.encoder_query(frame)):
        assert torch.allclose(a, b, atol=1e-4 * a.abs().max())
    twice = fold_batch_norms(folded)
    for a, b in zip(folded.state_dict().values(), twice.state_dict().values()):
        assert torch.equal(a, b)
