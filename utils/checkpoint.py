"""Checkpoints in the published format: {'epoch_index', 'best_metrics', 'tflownet', 'rmnet', ...}.

Published files were saved from DataParallel wrappers, so their keys start with `module.`.
Loading accepts keys with or without that prefix and is strict otherwise. Saving writes the
same format (with the prefix, so the published code can load our files) through a temporary
file and a rename, so an interrupted save never leaves a broken checkpoint behind.
"""
import os
from typing import Any, Dict, Mapping, Optional

import torch

from utils.cli import UserError
from utils.io import atomic_write

PREFIX = 'module.'
NETWORK_KEYS = ('tflownet', 'rmnet')


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the network; the message says why."""


def strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Remove the DataParallel/DDP `module.` prefix from every key that has it."""
    return {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}


def read_checkpoint(path: str, map_location: Any = 'cpu') -> Dict[str, Any]:
    """torch.load with an error that names the file when it is missing, truncated or foreign."""
    if not os.path.isfile(path):
        raise CheckpointError(f'{path}: checkpoint file not found')
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        size = os.path.getsize(path)
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint ({size} bytes; truncated '
                              f'or corrupt download?): {type(e).__name__}: {e}') from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path}: expected a dict with {NETWORK_KEYS}, got {type(checkpoint).__name__}')
    return checkpoint


def require_state_dict(value: Any, source: str) -> Mapping[str, torch.Tensor]:
    """`value` when it is a state dict (names -> tensors), else a CheckpointError naming `source`."""
    if not isinstance(value, Mapping) or not value:
        raise CheckpointError(f'{source}: expected a state dict (parameter names -> tensors), got '
                              f'{"an empty one" if isinstance(value, Mapping) else type(value).__name__}')
    wrong = [key for key, tensor in value.items() if not isinstance(key, str) or not torch.is_tensor(tensor)]
    if wrong:
        raise CheckpointError(f'{source}: expected a state dict (parameter names -> tensors); '
                              f'entry {wrong[0]!r} is {type(value[wrong[0]]).__name__}')
    return value


def load_state_strict(network: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                      source: str = 'checkpoint') -> None:
    """Load a state dict (with or without `module.`) strictly; errors list every mismatch."""
    target = network.module if hasattr(network, 'module') else network
    state = strip_prefix(require_state_dict(state_dict, source))
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f'{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}'
                        for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mismatched:
        lines = [f'{source} does not fit {type(target).__name__}:']
        for title, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                            ('shape mismatches', mismatched)):
            if keys:
                shown = ', '.join(keys[:10]) + (f', ... ({len(keys)} in all)' if len(keys) > 10 else '')
                lines.append(f'  {title}: {shown}')
        raise CheckpointError('\n'.join(lines))
    target.load_state_dict(state, strict=True)


def load_networks(path: str, tflownet: Optional[torch.nn.Module] = None,
                  rmnet: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """Load the given networks from a published-format checkpoint; return the whole dict."""
    checkpoint = read_checkpoint(path)
    for key, network in (('tflownet', tflownet), ('rmnet', rmnet)):
        if network is None:
            continue
        if key not in checkpoint:
            raise CheckpointError(f'{path}: has no {key!r} state dict (keys: {sorted(checkpoint)})')
        require_state_dict(checkpoint[key], f'{path} [{key}]')
        load_state_strict(network, checkpoint[key], source=f'{path} [{key}]')
    return checkpoint


def with_prefix(network: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """State dict of a (possibly wrapped) network with the published `module.` prefix."""
    target = network.module if hasattr(network, 'module') else network
    return {PREFIX + k: v.detach().cpu() for k, v in target.state_dict().items()}


def save_checkpoint(path: str, content: Dict[str, Any]) -> None:
    """torch.save to a temporary file in the same folder, synced, then an atomic rename (a
    failure raises utils.io.WriteError naming `path` and leaves it as it was)."""
    atomic_write(path, lambda temporary: _torch_save(content, temporary), durable=True)


class _FailureRecordingFile:
    """A binary file for torch.save that keeps the OSError of a failed write (torch.save reports
    it as a RuntimeError without the reason)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.failure: Optional[OSError] = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.failure = e
            raise

    def flush(self) -> None:
        self.file.flush()


def _torch_save(content: Dict[str, Any], path: str) -> None:
    with open(path, 'wb') as f:
        sink = _FailureRecordingFile(f)
        try:
            torch.save(content, sink)
        except RuntimeError:
            if sink.failure is not None:
                raise sink.failure
            raise


def published_checkpoint(tflownet: torch.nn.Module, rmnet: torch.nn.Module, epoch_index: int = 0,
                         best_metrics: Optional[Dict[str, float]] = None,
                         **extra: Any) -> Dict[str, Any]:
    """The published dict for the two networks; `extra` adds resume state (optimizer, ...)."""
    content = {'epoch_index': epoch_index,
               'best_metrics': best_metrics or {'J-Mean': 0.0, 'F-Mean': 0.0, 'JF-Mean': 0.0},
               'tflownet': with_prefix(tflownet),
               'rmnet': with_prefix(rmnet)}
    content.update(extra)
    return content
