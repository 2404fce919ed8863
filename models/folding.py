"""Folding eval-mode BatchNorm into the convolution before it (inference only)."""
import copy

import torch

from models.rmnet import EncoderMemory, RMNet


def _bn_affine(bn: torch.nn.BatchNorm2d):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _scaled_conv(conv: torch.nn.Conv2d, scale: torch.Tensor, shift) -> torch.nn.Conv2d:
    """conv followed by x * scale + shift, as one convolution (shift None: no bias added)."""
    folded = copy.deepcopy(conv)
    folded.weight = torch.nn.Parameter(conv.weight * scale[:, None, None, None])
    bias = None if conv.bias is None else conv.bias * scale
    if shift is not None:
        bias = shift if bias is None else bias + shift
    folded.bias = None if bias is None else torch.nn.Parameter(bias)
    return folded


@torch.no_grad()
def fold_batch_norms(rmnet: RMNet) -> RMNet:
    """A copy of RMNet in which every BatchNorm (in eval mode: a per-channel affine map) is
    merged into the convolution before it; same function up to rounding, fewer kernels."""
    net = copy.deepcopy(rmnet).eval()
    for encoder in (net.encoder_memory, net.encoder_query):
        scale, shift = _bn_affine(encoder.bn1)
        encoder.conv1 = _scaled_conv(encoder.conv1, scale, shift)
        if isinstance(encoder, EncoderMemory):
            encoder.conv1_m = _scaled_conv(encoder.conv1_m, scale, None)
            encoder.conv1_o = _scaled_conv(encoder.conv1_o, scale, None)
        encoder.bn1 = torch.nn.Identity()
        for layer in (encoder.res2, encoder.res3, encoder.res4):
            for block in layer:
                for conv_name, bn_name in (('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3')):
                    scale, shift = _bn_affine(getattr(block, bn_name))
                    setattr(block, conv_name, _scaled_conv(getattr(block, conv_name), scale, shift))
                    setattr(block, bn_name, torch.nn.Identity())
                if block.downsample is not None:
                    scale, shift = _bn_affine(block.downsample[1])
                    block.downsample[0] = _scaled_conv(block.downsample[0], scale, shift)
                    block.downsample[1] = torch.nn.Identity()
    return net
