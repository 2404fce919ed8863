"""Starting RMNet from random weights: new-layer initialisation and a data-dependent calibration."""
import math
from typing import Iterable, Tuple

import torch

from models.rmnet import RMNet


def init_new_layers(module: torch.nn.Module) -> None:
    """Kaiming-normal weights and zero biases for the layers RMNet adds (SPEC 5)."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


@torch.no_grad()
def calibrate_random_rmnet(rmnet: RMNet, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                           score_std: float = 2.0) -> None:
    """Condition a randomly initialised RMNet on real frames before training from scratch.

    A random ResNet with frozen BatchNorm (running mean 0, variance 1) lets activations grow
    block after block; the memory read then saturates to one position and the soft
    aggregation clamps every probability, so no gradient flows. This sets the encoders'
    BatchNorm statistics to those of `batches` ((frames (B, 3, H, W), masks (B, 1, H, W))) and
    scales both key convolutions so that memory-read scores have a standard deviation of
    `score_std` (a soft attention), as a trained network has; the decoder's last layer starts
    at zero (every object probability 0.5), so no logit starts in the clamped range.
    """
    encoders = (rmnet.encoder_memory, rmnet.encoder_query)
    norms = [m for e in encoders for m in e.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    modes = [e.training for e in encoders]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None                      # cumulative average over the batches
    for encoder in encoders:
        encoder.train()
    query_keys, memory_keys = [], []
    for frames, masks in batches:
        others = torch.zeros_like(masks)
        memory_r4 = rmnet.encoder_memory(frames, masks, others)
        query_r4 = rmnet.encoder_query(frames)[0]
        memory_keys.append(rmnet.kv_memory.key_conv(memory_r4))
        query_keys.append(rmnet.kv_query.key_conv(query_r4))
    for bn in norms:
        bn.momentum = 0.1
    for encoder, mode in zip(encoders, modes):
        encoder.train(mode)
    memory_key, query_key = torch.cat(memory_keys), torch.cat(query_keys)
    scores = torch.einsum('bchw,bcxy->bhwxy', memory_key, query_key) / math.sqrt(memory_key.shape[1])
    scale = math.sqrt(score_std / max(float(scores.std()), 1e-12))
    for key_conv in (rmnet.kv_memory.key_conv, rmnet.kv_query.key_conv):
        key_conv.weight.mul_(scale)
        key_conv.bias.mul_(scale)
    torch.nn.init.zeros_(rmnet.decoder.pred2.weight)
    torch.nn.init.zeros_(rmnet.decoder.pred2.bias)
