"""RMNet and TinyFlowNet building blocks: shapes, warping, soft aggregation, CPU vs GPU."""
import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from config import cfg
from conftest import PUBLISHED, normalise, require_shared
from models.memory_read import read_memory_dense
from models.object_manager import ObjectIndex
from models.recurrence import FrameRecurrence
from models.rmnet import RMNet, warp_backward
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import load_networks
from utils.io import read_frame, read_mask


@torch.no_grad()
def test_tiny_flownet_shapes_with_padding():
    net = TinyFlowNet().eval()
    flows = net(torch.randn(2, 3, 3, 37, 53))
    assert flows.shape == (2, 3, 2, 37, 53)
    assert flows[:, 0].abs().max() == 0 and flows[:, 1:].abs().max() > 0


def test_warp_backward_moves_and_invalidates():
    image = torch.zeros(1, 1, 6, 8)
    image[0, 0, 2, 3] = 1
    flow = torch.zeros(1, 2, 6, 8)
    flow[:, 0] = 1.0                       # pixel p of frame t came from p + (1, 0) in frame t-1
    warped = warp_backward(image, flow)
    assert warped[0, 0, 2, 2] == 1 and warped.sum() == 1
    assert warped[0, 0, :, 7].abs().sum() == 0     # sources beyond the right border
    flow[:, 0] = 0.5
    half = warp_backward(torch.ones(1, 1, 6, 8), flow)
    assert torch.allclose(half[0, 0, :, :7], torch.ones(6, 7)) and torch.all(half[0, 0, :, 7] == 0)


def test_soft_aggregation_by_hand():
    objects = ObjectIndex.from_counts([2], torch.device('cpu'))
    fg = torch.tensor([[[0.5, 1.0]], [[0.2, 0.0]]])        # 2 objects, 1x2 image
    logits = RMNet.aggregate(fg, objects, n_channels=4, pad=(0, 0, 0, 0))
    expected = torch.tensor([[0.4, 1e-7], [0.5, 1 - 1e-7], [0.2, 1e-7], [1e-7, 1e-7]])
    assert torch.allclose(torch.sigmoid(logits[0, :, 0]), expected, atol=1e-6)
    assert logits[0, 3, 0, 0] == pytest.approx(-16.1181, abs=1e-4)


def test_dense_read_out_of_region_positions_count_as_zero_scores():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 4, 2, 3, 3, generator=generator)
    values = torch.randn(1, 5, 2, 3, 3, generator=generator)
    region = torch.zeros(1, 1, 2, 3, 3)
    region[..., :2, :2] = 1
    query_key = torch.randn(1, 4, 3, 3, generator=generator)
    query_value = torch.randn(1, 5, 3, 3, generator=generator)
    out = read_memory_dense(keys * region, values * region, query_key, query_value)
    assert out.shape == (1, 10, 3, 3) and torch.equal(out[:, 5:], query_value)
    inside = region.flatten().bool()
    mk, mv = keys.reshape(4, -1)[:, inside], values.reshape(5, -1)[:, inside]
    scores = mk.t() @ query_key.reshape(4, -1) / 2.0
    weights = torch.exp(scores)
    denominator = weights.sum(0) + (inside.numel() - inside.sum())  # exp(0) per outside position
    expected = (mv @ weights) / denominator
    assert torch.allclose(out[0, :5].reshape(5, -1), expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_whole_model_same_on_cpu_and_gpu(synth_checkpoint):
    clip = os.path.join(require_shared(PUBLISHED), 'clip')
    frames = np.stack([read_frame(p) for p in sorted(glob.glob(f'{clip}/JPEGImages/480p/synth/*.jpg'))])
    ids = torch.from_numpy(read_mask(f'{clip}/Annotations/480p/synth/00000.png')).long()
    x = normalise(frames)[None]
    masks = torch.nn.functional.one_hot(ids, 11).permute(2, 0, 1)[None, None].float().repeat(1, 8, 1, 1, 1)
    n_objects = torch.full((1, 8), 2)
    outputs = {}
    for device in ('cpu', 'cuda'):
        tflownet, rmnet = TinyFlowNet().eval(), RMNet(cfg).eval()
        load_networks(synth_checkpoint, tflownet=tflownet, rmnet=rmnet)
        tflownet.to(device), rmnet.to(device)
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            flows = tflownet(x.to(device))
            outputs[device] = (flows.cpu(), rmnet(x, masks, flows, n_objects, 5).cpu())
    assert (outputs['cpu'][0] - outputs['cuda'][0]).abs().max() < 1e-4
    difference = (outputs['cpu'][1] - outputs['cuda'][1]).abs().amax(dim=(0, 2, 3, 4))
    # the frame-to-frame recurrence amplifies rounding differences (see published_outputs/README)
    assert difference[:4].max() < 1e-4 and difference.max() < 1e-3, difference


def two_box_clips(n_frames: int, second_box_in):
    """A random RMNet (seed 0) and two clips of 32x48 random frames, zero flows and one-hot masks
    (4 channels) of a box 1 in both clips and a box 2 in the clips `second_box_in`."""
    torch.manual_seed(0)
    net = RMNet(cfg).eval()
    frames = torch.randn(2, n_frames, 3, 32, 48)
    ids = torch.zeros(2, n_frames, 32, 48, dtype=torch.long)
    ids[:, :, 4:14, 4:20] = 1
    ids[second_box_in, :, 18:30, 26:44] = 2
    masks = F.one_hot(ids, 4).permute(0, 1, 4, 2, 3).float()
    return net, frames, masks, torch.zeros(2, n_frames, 2, 32, 48)


def test_forward_encodes_the_queries_of_a_clip_together_with_the_same_result():
    """RMNet.forward (every later frame's query encoded as one batch) equals the frame loop with
    each frame encoded on its own: probabilities and the gradient of the encoder's weights."""
    n_frames = 4
    net, frames, masks, flows = two_box_clips(n_frames, second_box_in=[0])
    n_objects = torch.tensor([[2] * n_frames, [1] * n_frames])

    def weight_grad(probs):
        net.zero_grad()
        probs[:, 1:, 1].sum().backward()
        return net.encoder_query.res3[0].conv1.weight.grad.clone()

    together = net(frames, masks, flows, n_objects, memorize_every=1)
    grad_together = weight_grad(together)
    loop = FrameRecurrence(net, [2, 1], memorize_every=1)
    loop.start(frames[:, 0], masks[:, 0])
    alone = torch.stack([masks[:, 0]] + [loop.step(frames[:, t], flows[:, t]) for t in range(1, n_frames)], dim=1)
    grad_alone = weight_grad(alone)
    assert torch.allclose(together, alone, atol=1e-6)
    assert grad_together.abs().max() > 0
    assert torch.allclose(grad_together, grad_alone, rtol=1e-4, atol=1e-6)


def test_forward_reads_the_object_index_held_by_the_caller():
    """A captured training step passes the object index in, its device values rewritten for each
    batch with as many objects: an index built for the counts [1, 2] whose values were then
    rewritten with those of [2, 1] gives the forward of [2, 1], whatever n_objects says."""
    n_frames = 3
    net, frames, masks, flows = two_box_clips(n_frames, second_box_in=[0, 1])
    one_two = torch.tensor([[1] * n_frames, [2] * n_frames])
    two_one = torch.tensor([[2] * n_frames, [1] * n_frames])
    values = ObjectIndex.host_values([1, 2])
    held = ObjectIndex.from_values(values, [1, 2])
    values.copy_(ObjectIndex.host_values([2, 1]))
    with torch.no_grad():
        built_one_two = net(frames, masks, flows, one_two, memorize_every=1)
        built_two_one = net(frames, masks, flows, two_one, memorize_every=1)
        given = net(frames, masks, flows, one_two, memorize_every=1, objects=held)
    assert held.batch.tolist() == [0, 0, 1] and held.channel.tolist() == [1, 2, 1]
    assert torch.equal(given, built_two_one)
    assert not torch.allclose(given, built_one_two)


def test_soft_aggregation_value_and_gradient_equal_the_product_over_objects():
    """The background is prod_k (1 - p_k); with a zero factor (p = 1) the gradient stays exact."""
    objects = ObjectIndex.from_counts([3, 1], torch.device('cpu'))
    fg = torch.rand(4, 5, 6, generator=torch.Generator().manual_seed(2))
    fg[0, 0, 0] = 1.0
    fg.requires_grad_(True)
    logits = RMNet.aggregate(fg, objects, n_channels=4, pad=(0, 0, 0, 0))
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3))
    (logits * weights).sum().backward()
    reference_fg = fg.detach().clone().requires_grad_(True)
    probs = torch.zeros(2, 4, 5, 6).index_put((objects.batch, objects.channel), reference_fg)
    background = torch.prod(1 - probs[:, 1:], dim=1, keepdim=True)
    probs = torch.cat([background, probs[:, 1:]], dim=1).clamp(1e-7, 1 - 1e-7)
    (torch.log(probs / (1 - probs)) * weights).sum().backward()
    assert torch.allclose(logits, torch.log(probs / (1 - probs)), atol=1e-5)
    assert torch.allclose(fg.grad, reference_fg.grad, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_soft_aggregation_gradient_does_not_synchronise_on_the_gpu():
    objects = ObjectIndex.from_counts([2, 1], torch.device('cuda'))
    fg = torch.rand(3, 8, 8, device='cuda', requires_grad=True)
    logits = RMNet.aggregate(fg, objects, n_channels=4, pad=(0, 0, 0, 0))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        logits.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert torch.isfinite(fg.grad).all()
