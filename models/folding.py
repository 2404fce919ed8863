"""Folding eval-mode BatchNorm into the convolution before it (inference only)."""
import copy

import torch

from models.rmnet import EncoderMemory, RMNet


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.Module, shift: bool = True) -> torch.nn.Conv2d:
    """conv then bn as one convolution; a conv whose BatchNorm is already folded stays as is."""
    if not isinstance(bn, torch.nn.BatchNorm2d):
        return conv
    scale, offset = _bn_affine(bn)
    return _scaled_conv(conv, scale, offset if shift else None)


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
    merged into the convolution before it; same function up to rounding, fewer kernels.
    Folding a folded network changes nothing."""
    net = copy.deepcopy(rmnet).eval()
    for encoder in (net.encoder_memory, net.encoder_query):
        if isinstance(encoder, EncoderMemory):
            encoder.conv1_m = _fold(encoder.conv1_m, encoder.bn1, shift=False)
            encoder.conv1_o = _fold(encoder.conv1_o, encoder.bn1, shift=False)
        encoder.conv1 = _fold(encoder.conv1, encoder.bn1)
        encoder.bn1 = torch.nn.Identity()
        for layer in (encoder.res2, encoder.res3, encoder.res4):
            for block in layer:
                for conv_name, bn_name in (('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3')):
                    setattr(block, conv_name, _fold(getattr(block, conv_name), getattr(block, bn_name)))
                    setattr(block, bn_name, torch.nn.Identity())
                if block.downsample is not None:
                    block.downsample[0] = _fold(block.downsample[0], block.downsample[1])
                    block.downsample[1] = torch.nn.Identity()
    return net
