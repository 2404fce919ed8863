"""Preparing the encoders for inference: eval-mode BatchNorm folded into the convolution
before it, and each ResNet bottleneck's convolutions with their bias, residual addition and
ReLU done inside one cuDNN call on the GPU (fused epilogue; elsewhere, or where cuDNN has no
fused kernel, the same operations one after another)."""
import copy
import logging

import torch
import torch.nn.functional as F
from torchvision.models.resnet import Bottleneck

from models.rmnet import EncoderMemory, RMNet

logger = logging.getLogger(__name__)


class ConvReLU(torch.nn.Conv2d):
    """relu(conv(x) + residual), the residual optional. On CUDA one cuDNN call whose epilogue
    adds the bias and the residual and applies the ReLU, so no pass over the output follows."""

    fused = True      # cleared (with one warning) when cuDNN refuses the fused call

    def forward(self, x: torch.Tensor, residual: torch.Tensor = None) -> torch.Tensor:
        if x.is_cuda and ConvReLU.fused:
            try:
                return self.fused_forward(x, residual)
            except RuntimeError as e:
                if isinstance(e, torch.OutOfMemoryError) or torch.cuda.is_current_stream_capturing():
                    raise
                ConvReLU.fused = False
                logger.warning('cuDNN cannot fuse bias, residual and ReLU into the convolution (%s); '
                               'running them one after another', str(e).splitlines()[0])
        return self.unfused_forward(x, residual)

    def fused_forward(self, x: torch.Tensor, residual: torch.Tensor = None) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        arguments = (self.stride, self.padding, self.dilation, self.groups)
        if residual is None:
            return torch.cudnn_convolution_relu(x, self.weight, self.bias, *arguments)
        return torch.cudnn_convolution_add_relu(x, self.weight, residual.to(x.dtype), 1.0, self.bias,
                                                *arguments)

    def unfused_forward(self, x: torch.Tensor, residual: torch.Tensor = None) -> torch.Tensor:
        y = super().forward(x)
        return F.relu(y if residual is None else y + residual)


class FoldedBottleneck(torch.nn.Module):
    """torchvision's Bottleneck with its BatchNorms folded: three ConvReLUs (the last one adds
    the shortcut before its ReLU) and the shortcut's convolution, when it has one."""

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.conv1 = _conv_relu(_fold(block.conv1, block.bn1))
        self.conv2 = _conv_relu(_fold(block.conv2, block.bn2))
        self.conv3 = _conv_relu(_fold(block.conv3, block.bn3))
        self.downsample = None
        if block.downsample is not None:
            self.downsample = _fold(block.downsample[0], block.downsample[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), shortcut)


def _conv_relu(conv: torch.nn.Conv2d) -> ConvReLU:
    fused = ConvReLU(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     conv.dilation, conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     device=conv.weight.device, dtype=conv.weight.dtype)
    fused.load_state_dict(conv.state_dict())
    return fused


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
    merged into the convolution before it and the bottlenecks are FoldedBottlenecks; same
    function up to rounding, fewer kernels. Folding a folded network changes nothing."""
    net = copy.deepcopy(rmnet).eval()
    for encoder in (net.encoder_memory, net.encoder_query):
        if isinstance(encoder, EncoderMemory):
            encoder.conv1_m = _fold(encoder.conv1_m, encoder.bn1, shift=False)
            encoder.conv1_o = _fold(encoder.conv1_o, encoder.bn1, shift=False)
        encoder.conv1 = _fold(encoder.conv1, encoder.bn1)
        encoder.bn1 = torch.nn.Identity()
        for layer in (encoder.res2, encoder.res3, encoder.res4):
            for index, block in enumerate(layer):
                if isinstance(block, Bottleneck):
                    layer[index] = FoldedBottleneck(block)
    return net
