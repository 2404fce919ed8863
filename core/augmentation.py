"""Test-time augmentation as published (SPEC 4, `multi_scale_inference`), frame by frame.

Each scale of TEST.FRAME_SCALES is a branch: the normalised frames resized bilinearly
(align_corners False) and the one-hot masks with nearest, the frame recurrence on that video
with its own TinyFlowNet step (frame t with t-1 at that scale), and with TEST.FLIP_LR also
the mirrored video, whose flow is the scale's flow mirrored with x negated. The
probabilities of every variant, frame 0 included (the resized given mask), are mirrored
back, resized back bilinearly to the network size, and averaged.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from models.recurrence import FrameRecurrence


def resize_frames(frames: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return frames
    return F.interpolate(frames, scale_factor=scale, mode='bilinear', align_corners=False)


def resize_masks(masks: Optional[torch.Tensor], scale: float) -> Optional[torch.Tensor]:
    if masks is None or scale == 1.0:
        return masks
    return F.interpolate(masks, scale_factor=scale, mode='nearest')


def mirror(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if x is None else torch.flip(x, dims=[3])


def mirror_flow(flow: torch.Tensor) -> torch.Tensor:
    """The flow of the mirrored frames: mirrored, its x component negated."""
    flow = torch.flip(flow, dims=[3])
    return torch.cat([-flow[:, :1], flow[:, 1:]], dim=1)


def resize_back(probs: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(probs.shape[-2:]) == tuple(size):
        return probs
    return F.interpolate(probs.float(), size=tuple(size), mode='bilinear', align_corners=False)


class ScaleBranch:
    """One scale: its recurrence, and the recurrence of the mirrored video (None: no flip).
    The recurrence computes its flows (it holds TinyFlowNet); the mirrored one is given them."""

    def __init__(self, scale: float, recurrence: FrameRecurrence,
                 mirrored: Optional[FrameRecurrence], size: Tuple[int, int]):
        self.scale = scale
        self.recurrence = recurrence
        self.mirrored = mirrored
        self.size = size

    def recurrences(self) -> List[FrameRecurrence]:
        return [r for r in (self.recurrence, self.mirrored) if r is not None]

    def expect(self, expected_frames: Optional[int]) -> None:
        """The length of the next video, when known (sizes its memory once)."""
        for recurrence in self.recurrences():
            recurrence.expect(expected_frames)

    def memory_bytes(self) -> int:
        """The bytes its recurrences' preallocated memory holds."""
        return sum(recurrence.memory_bytes() for recurrence in self.recurrences())

    def release(self) -> None:
        """Free the GPU memory of its recurrences now."""
        for recurrence in self.recurrences():
            recurrence.release()

    def start(self, frame: torch.Tensor, masks: torch.Tensor) -> List[torch.Tensor]:
        """Frame 0 (1, 3, h, w) at network size and its one-hot masks: the variants' frame-0
        probabilities, at network size."""
        frame, masks = resize_frames(frame, self.scale), resize_masks(masks, self.scale)
        self.recurrence.start(frame, masks)
        outputs = [resize_back(masks, self.size)]
        if self.mirrored is not None:
            self.mirrored.start(mirror(frame), mirror(masks))
            outputs.append(resize_back(masks, self.size))   # mirrored and mirrored back
        return outputs

    def step(self, frame: torch.Tensor, new_masks: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """The next frame at network size (and the masks given in it): the variants' probabilities."""
        frame, new_masks = resize_frames(frame, self.scale), resize_masks(new_masks, self.scale)
        outputs = [resize_back(self.recurrence.step(frame, None, new_masks), self.size)]
        if self.mirrored is not None:
            probs = self.mirrored.step(mirror(frame), mirror_flow(self.recurrence.flow), mirror(new_masks))
            outputs.append(resize_back(mirror(probs), self.size))
        return outputs
