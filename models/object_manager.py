"""Objects of a video: the user's ids, the mask channel of each, and where each first appears.

`ObjectManager` maps the user's object ids (as in the given masks: palette indexes, id
values) to mask channels and back, and collects the objects that appear after frame 0
(dataset annotations, the CLI's FRAME:FILE masks, VideoSegmenter.add_object). Channel 0 is
the background; the objects, in increasing id order, take channels 1..n. Pixels with the
void id (cfg.CONST.IGNORE_IDX) are background. `ObjectIndex` numbers the objects of a batch
of videos as the rows of the per-object tensors of the networks.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from utils.cli import UserError


class SegmentationError(UserError, ValueError):
    """Input that cannot be segmented (bad mask, too many objects, ...); the message says why."""


class NoNewObject(SegmentationError):
    """A mask given for a later frame that adds no object."""


class ObjectManager:
    """The objects of one video, from its first mask (an (H, W) array of ids)."""

    def __init__(self, first_mask: np.ndarray, void_id: int, max_objects: int):
        self.void_id = void_id
        self.max_objects = max_objects
        self.first_mask = self._id_array(np.asarray(first_mask), 'the first mask')
        ids = self.ids_in(self.first_mask)
        if not ids:
            raise SegmentationError('the first mask has no object (every pixel is 0 or void)')
        self.first_frames: Dict[int, int] = {object_id: 0 for object_id in ids}
        self.given: Dict[int, np.ndarray] = {}    # frame -> ids of the objects first given there
        if len(ids) > max_objects:
            raise SegmentationError(f'{len(ids)} objects, but TEST.N_MAX_OBJECTS is {max_objects}; '
                                    f'raise it with --set TEST.N_MAX_OBJECTS {len(ids)}')

    @classmethod
    def from_cfg(cls, first_mask: np.ndarray, cfg) -> 'ObjectManager':
        return cls(first_mask, int(cfg.CONST.IGNORE_IDX), int(cfg.TEST.N_MAX_OBJECTS))

    @property
    def ids(self) -> List[int]:
        """Every object id, in channel order."""
        return sorted(self.first_frames)

    def __len__(self) -> int:
        return len(self.first_frames)

    def ids_in(self, mask: np.ndarray) -> List[int]:
        """The object ids of an id mask (neither 0 nor void)."""
        return sorted(set(np.unique(mask).tolist()) - {0, self.void_id})

    def next_free_id(self) -> int:
        """One above every id known so far (skipping the void id)."""
        candidate = max(self.first_frames) + 1
        return candidate + 1 if candidate == self.void_id else candidate

    def add(self, frame_index: int, mask: np.ndarray, object_id: Optional[int] = None) -> List[int]:
        """Objects first given in a later frame; returns the ids added.

        A binary mask (bool, or one non-zero value such as 0/1 or 0/255) with `object_id` adds
        that object; a bool mask without it takes the next free id. Any other mask is an id
        mask: its ids not known yet are added, those already known are left out. A mask that
        adds nothing raises SegmentationError saying why.
        """
        where = f'the mask given for frame {frame_index}'
        if frame_index < 1:
            raise SegmentationError(f'{where}: later objects are for frames after the first; '
                                    f'give the objects of frame 0 in the first mask')
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise SegmentationError(f'{where}: expected an (H, W) mask, got shape {mask.shape}')
        if mask.shape != self.first_mask.shape:
            raise SegmentationError(f'{where}: its size {mask.shape[1]}x{mask.shape[0]} differs from '
                                    f'the first mask ({self.first_mask.shape[1]}x{self.first_mask.shape[0]})')
        if object_id is not None or mask.dtype == bool:
            ids = self._binary_object(where, mask, object_id)
        else:
            ids = self._id_array(mask, where)
        new = [i for i in self.ids_in(ids) if i not in self.first_frames]
        if not new:
            known = self.ids_in(ids)
            if known:
                raise NoNewObject(
                    f'{where} adds no object: its id(s) {", ".join(map(str, known))} are already known '
                    f'(pass object_id for a binary mask of a new object)')
            raise NoNewObject(f'{where} adds no object: every pixel is 0 or void')
        if len(self) + len(new) > self.max_objects:
            raise SegmentationError(f'{where} brings the number of objects to {len(self) + len(new)}, '
                                    f'but TEST.N_MAX_OBJECTS is {self.max_objects}; raise it with '
                                    f'--set TEST.N_MAX_OBJECTS {len(self) + len(new)}')
        ids = np.where(np.isin(ids, new), ids, 0).astype(np.uint8)
        if frame_index in self.given:
            ids = np.where(ids > 0, ids, self.given[frame_index]).astype(np.uint8)
        self.given[frame_index] = ids
        self.first_frames.update({object_id: frame_index for object_id in new})
        return new

    def _binary_object(self, where: str, mask: np.ndarray, object_id: Optional[int]) -> np.ndarray:
        values = set(np.unique(mask).tolist()) - {0, False}
        if len(values) > 1:
            raise SegmentationError(f'{where}: object_id is for a binary mask, but this mask holds the '
                                    f'values {", ".join(map(str, sorted(values)))} (an id mask: '
                                    f'leave out object_id)')
        if not values:
            raise NoNewObject(f'{where} adds no object: the binary mask is empty')
        object_id = self.next_free_id() if object_id is None else int(object_id)
        if not 1 <= object_id <= 255 or object_id == self.void_id:
            raise SegmentationError(f'{where}: object_id must lie in 1..255 and differ from the void id '
                                    f'{self.void_id}, got {object_id}')
        if object_id in self.first_frames:
            raise SegmentationError(f'{where}: object {object_id} already exists (given in frame '
                                    f'{self.first_frames[object_id]})')
        return np.where(mask != 0, object_id, 0).astype(np.uint8)

    def _id_array(self, mask: np.ndarray, where: str) -> np.ndarray:
        if mask.ndim != 2:
            raise SegmentationError(f'{where}: expected an (H, W) mask, got shape {mask.shape}')
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise SegmentationError(f'{where}: object ids must lie in 0..255, got {mask.min()}..{mask.max()}')
        return mask.astype(np.uint8)

    def channel_lookup(self) -> np.ndarray:
        """(256,) int64: the channel of every id value (void and unknown values: background)."""
        lookup = np.zeros(256, np.int64)
        lookup[self.ids] = np.arange(1, len(self) + 1)
        return lookup

    def channel_ids(self, n_channels: int) -> np.ndarray:
        """(n_channels,) uint8: the user's id of every channel (0 for the background and the
        channels beyond the video's objects)."""
        ids = np.zeros(n_channels, np.uint8)
        ids[1:len(self) + 1] = self.ids
        return ids


def present_channels(masks: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) masks -> (B, K) bool: channels that win the argmax somewhere."""
    batch, channels = masks.shape[:2]
    winners = masks.argmax(dim=1).flatten(1)
    present = torch.zeros(batch, channels, dtype=torch.bool, device=masks.device)
    return present.scatter_(1, winners, True)


@dataclass
class ObjectIndex:
    """Which batch item and mask channel each object row belongs to (objects are batched)."""
    batch: torch.Tensor          # (N,) long
    channel: torch.Tensor        # (N,) long, >= 1
    counts: List[int]            # objects per batch item
    counts_tensor: torch.Tensor  # (B,) long, on the device

    @staticmethod
    def host_values(counts: Sequence[int]) -> torch.Tensor:
        """The index of `counts` objects per batch item as one host tensor: the batch item of
        each object, its channel, then the counts ((2N + B,) long)."""
        counts = [int(n) for n in counts]
        batch = [b for b, n in enumerate(counts) for _ in range(n)]
        channel = [k for n in counts for k in range(1, n + 1)]
        return torch.tensor(batch + channel + counts, dtype=torch.long)

    @classmethod
    def from_values(cls, values: torch.Tensor, counts: Sequence[int]) -> 'ObjectIndex':
        """The index whose host_values(counts) are `values` (views of it, on its device): a
        CUDA graph replayed for another batch with as many objects reads new values there."""
        counts = [int(n) for n in counts]
        n_objects = sum(counts)
        return cls(values[:n_objects], values[n_objects:2 * n_objects], counts, values[2 * n_objects:])

    @classmethod
    def from_counts(cls, counts: Sequence[int], device: torch.device) -> 'ObjectIndex':
        """The index of `counts` objects per batch item, moved to `device` in one copy; on a GPU
        from pinned memory, so that the host does not wait for the GPU's queued work (a copy from
        ordinary memory would, at the start of every training step)."""
        host = cls.host_values(counts)
        if torch.device(device).type == 'cuda':
            host = host.pin_memory()
        return cls.from_values(host.to(device, non_blocking=True), counts)

    def __len__(self) -> int:
        return int(self.batch.numel())

    def channel_in_use(self, n_channels: int) -> torch.Tensor:
        """(B, K) bool: channels 0..n of every batch item."""
        channels = torch.arange(n_channels, device=self.batch.device)
        return channels[None] <= self.counts_tensor[:, None]
