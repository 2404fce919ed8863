"""Training augmentations of a clip, composed per stage from the config (SPEC 5 order).

A clip is a dict:
    frames: list of (H, W, 3) uint8 RGB,
    masks:  list of (H, W) uint8 object ids, 255 = ignore (one-hot (K, H, W) after ToOneHot),
    flows:  list of (H, W, 2) float32 backward flows: pixel p of frame t came from p + flow(p) in
            frame t-1; the flow of frame 0 is zero (its predecessor is not in the clip).
ToOneHot adds `labels` (list of (H, W) uint8 channel indexes, 255 kept) and `n_objects`,
Brightness its factor `brightness`, RandomChannelPermutation its `channel_order`. The frames
stay bytes to the device, where `normalise_frames` applies the brightness and the normalisation
(the same float32 operations as on the host, bit for bit: a quarter of the bytes to copy).

Every transform is called as transform(clip, rng) with a numpy Generator and returns a new clip;
all randomness comes from that generator, so a clip is reproducible from its seed.
"""
import math
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch

from extensions.flow_affine_transformation import invert_affine, update_flow

Clip = Dict[str, object]
Transform = Callable[[Clip, np.random.Generator], Clip]

CLIP_STREAM = 0   # first word of the seed of every clip's generator (other streams use others)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training sample: a pure function of (seed, epoch, sample index), so
    a clip does not depend on the worker that draws it."""
    return np.random.default_rng([CLIP_STREAM, int(seed), int(epoch), int(index)])


def blank_flows(frames: List[np.ndarray]) -> List[np.ndarray]:
    """Zero (H, W, 2) flows for a list of frames."""
    return [np.zeros(f.shape[:2] + (2,), dtype=np.float32) for f in frames]


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        for transform in self.transforms:
            clip = transform(clip, rng)
        return clip


class Resize:
    """Resize so the short side is `size` (or to size x size); flows are resized and scaled."""

    def __init__(self, size: int, keep_ratio: bool = True):
        self.size = size
        self.keep_ratio = keep_ratio

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        if not self.keep_ratio:
            return self.size, self.size
        scale = self.size / min(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        height, width = clip['masks'][0].shape[:2]
        new_height, new_width = self.output_size(height, width)
        if (new_height, new_width) == (height, width):
            return clip
        dsize = (new_width, new_height)
        # cv2 maps pixel centres, x' = (x + 0.5) * s - 0.5, so a displacement scales by s exactly
        flow_scale = np.array([new_width / width, new_height / height], dtype=np.float32)
        return {**clip,
                'frames': [cv2.resize(f, dsize, interpolation=cv2.INTER_LINEAR)
                           for f in clip['frames']],
                'masks': [cv2.resize(m, dsize, interpolation=cv2.INTER_NEAREST_EXACT)
                          for m in clip['masks']],
                'flows': [cv2.resize(f, dsize, interpolation=cv2.INTER_LINEAR) * flow_scale
                          for f in clip['flows']]}


def affine_about_centre(height: int, width: int, degrees: float, scale: float,
                        shear: float) -> np.ndarray:
    """The 2x3 map original pixel -> warped pixel: rotation, scale and x-shear (degrees) about
    the image centre, no translation."""
    angle, shear = math.radians(degrees), math.radians(shear)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = scale * rotation @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]])
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    return np.hstack([linear, (centre - linear @ centre)[:, None]])


class RandomAffine:
    """An independent random affine per frame (rotation, scale, shear; no translation).

    Frames are filled with `frame_fill`, masks with `mask_fill` (ignore); each flow is updated
    with its frame's map and the previous frame's map (frame 0's flow as if its predecessor
    moved with it, so a zero flow stays zero).
    """

    def __init__(self, degrees: float, scale: Sequence[float], shear: float,
                 frame_fill: Sequence[int], mask_fill: int):
        self.degrees = degrees
        self.scale = tuple(scale)
        self.shear = shear
        self.frame_fill = tuple(float(v) for v in frame_fill)
        self.mask_fill = mask_fill

    def draw(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """One random original -> warped map (2x3)."""
        return affine_about_centre(height, width, rng.uniform(-self.degrees, self.degrees),
                                   rng.uniform(*self.scale), rng.uniform(-self.shear, self.shear))

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        height, width = clip['masks'][0].shape[:2]
        forward = [self.draw(height, width, rng) for _ in clip['frames']]
        to_src = [invert_affine(matrix) for matrix in forward]
        def warp(image: np.ndarray, inverse: np.ndarray, interpolation: int, fill) -> np.ndarray:
            return cv2.warpAffine(image, inverse, (width, height),
                                  flags=interpolation | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=fill)

        frames = [warp(frame, inverse, cv2.INTER_LINEAR, self.frame_fill)
                  for frame, inverse in zip(clip['frames'], to_src)]
        masks = [warp(mask, inverse, cv2.INTER_NEAREST, self.mask_fill)
                 for mask, inverse in zip(clip['masks'], to_src)]
        flows = [update_flow(flow, to_src[t], forward[max(t - 1, 0)], (height, width))
                 for t, flow in enumerate(clip['flows'])]
        return {**clip, 'frames': frames, 'masks': masks, 'flows': flows}


def crop_range(low: int, high: int, size: int, length: int) -> Tuple[int, int]:
    """Offsets o (inclusive range) for a window [o, o + size) that contains the span
    [low, high] when it fits, else lies inside it; limited to the image [0, length)."""
    first, last = sorted((low, high - size + 1))
    limit = length - size
    return min(max(first, 0), limit), min(max(last, 0), limit)


class RandomCrop:
    """One size x size window for the whole clip, containing the first frame's objects when
    possible; images smaller than the window are padded (fill colour, ignore label, zero flow)."""

    def __init__(self, size: int, frame_fill: Sequence[int], ignore_index: int):
        self.size = size
        self.frame_fill = tuple(int(v) for v in frame_fill)
        self.ignore_index = ignore_index

    def pad(self, clip: Clip) -> Clip:
        height, width = clip['masks'][0].shape[:2]
        extra_h, extra_w = max(self.size - height, 0), max(self.size - width, 0)
        if not extra_h and not extra_w:
            return clip
        top, left = extra_h // 2, extra_w // 2
        border = dict(top=top, bottom=extra_h - top, left=left, right=extra_w - left,
                      borderType=cv2.BORDER_CONSTANT)
        return {**clip,
                'frames': [cv2.copyMakeBorder(f, value=self.frame_fill, **border)
                           for f in clip['frames']],
                'masks': [cv2.copyMakeBorder(m, value=self.ignore_index, **border)
                          for m in clip['masks']],
                'flows': [cv2.copyMakeBorder(f, value=(0, 0), **border) for f in clip['flows']]}

    def window(self, first_mask: np.ndarray, rng: np.random.Generator) -> Tuple[int, int]:
        """Top-left corner (y, x) of the crop."""
        height, width = first_mask.shape
        objects = (first_mask != 0) & (first_mask != self.ignore_index)
        rows, cols = np.flatnonzero(objects.any(axis=1)), np.flatnonzero(objects.any(axis=0))
        if rows.size:
            y_range = crop_range(rows[0], rows[-1], self.size, height)
            x_range = crop_range(cols[0], cols[-1], self.size, width)
        else:
            y_range, x_range = (0, height - self.size), (0, width - self.size)
        return (int(rng.integers(y_range[0], y_range[1] + 1)),
                int(rng.integers(x_range[0], x_range[1] + 1)))

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        clip = self.pad(clip)
        y, x = self.window(clip['masks'][0], rng)
        window = (slice(y, y + self.size), slice(x, x + self.size))
        # the same shift on both frames of a flow pair leaves the flow values unchanged
        return {**clip, **{key: [array[window] for array in clip[key]]
                           for key in ('frames', 'masks', 'flows')}}


class ReorganizeObjectIds:
    """Renumber the objects of the first frame 1..n (in id order) in every frame; objects absent
    from the first frame become background (there is no reference mask for them); ignore kept."""

    def __init__(self, ignore_index: int):
        self.ignore_index = ignore_index

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        ids = [i for i in np.unique(clip['masks'][0]) if i not in (0, self.ignore_index)]
        lookup = np.zeros(256, dtype=np.uint8)
        lookup[ids] = np.arange(1, len(ids) + 1)
        lookup[self.ignore_index] = self.ignore_index
        return {**clip, 'masks': [lookup[mask] for mask in clip['masks']]}


class ToOneHot:
    """Keep at most `max_objects` objects (a random choice, in random order on channels
    1..n_objects; the others become background) and one-hot them on max_objects + 1 channels.

    `labels` keeps the channel index of each pixel with `ignore_index` kept (the loss ignores
    it); an ignored pixel is all zeros in the one-hot masks.
    """

    def __init__(self, max_objects: int, ignore_index: int):
        self.max_objects = max_objects
        self.ignore_index = ignore_index

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        n_present = int(max(int(m[m != self.ignore_index].max(initial=0)) for m in clip['masks']))
        n_kept = min(n_present, self.max_objects)
        lookup = np.zeros(256, dtype=np.uint8)
        lookup[rng.permutation(n_present)[:n_kept] + 1] = np.arange(1, n_kept + 1)
        lookup[self.ignore_index] = self.ignore_index
        labels = [lookup[mask] for mask in clip['masks']]
        channels = np.arange(self.max_objects + 1, dtype=np.uint8)[:, None, None]
        one_hot = [(label[None] == channels).astype(np.uint8) for label in labels]
        return {**clip, 'masks': one_hot, 'labels': labels, 'n_objects': n_kept}


class Brightness:
    """One random factor from `factor_range` for every frame of the clip (`brightness`), applied
    by normalise_frames: frames times the factor, clipped to 0..255."""

    def __init__(self, factor_range: Sequence[float]):
        self.factor_range = tuple(factor_range)

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        return {**clip, 'brightness': rng.uniform(*self.factor_range)}


class RandomChannelPermutation:
    """Shuffle the colour channels, the same way for every frame of the clip: channel c of the
    output is channel channel_order[c] of the input, normalised later with that input channel's
    mean and std (the same as permuting after the brightness and the normalisation: the one
    treats every channel alike, the other each channel apart)."""

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        order = rng.permutation(3)
        return {**clip, 'frames': [f[..., order] for f in clip['frames']], 'channel_order': order}


def normalise_frames(frames: torch.Tensor, brightness: torch.Tensor, channel_order: torch.Tensor,
                     mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Frames as the network takes them, on the frames' device: (B, T, 3, H, W) uint8 of B clips
    with their (B,) brightness factors and (B, 3) channel orders (host tensors are copied without
    waiting: pin them) -> float32 ((clip(x * brightness, 0, 255) / 255) - mean) / std, each
    channel with its own entry of the (3,) float32 mean and std (on the frames' device)."""
    device, batch = frames.device, frames.shape[0]
    broadcast = (1,) * (frames.dim() - 1)
    scale = brightness.to(device, non_blocking=True).float().view(batch, *broadcast)
    x = (frames.float() * scale).clamp_(0, 255)
    # the divisor as a device tensor: a true division, as numpy's (a GPU divides by a host
    # scalar by multiplying with its reciprocal)
    x = x / torch.full((), 255.0, device=device)
    shape = (batch,) + (1,) * (frames.dim() - 4) + (3, 1, 1)
    order = channel_order.to(device, non_blocking=True).long()
    return (x - mean[order].view(shape)) / std[order].view(shape)


class ToTensor:
    """frames (T, 3, H, W) uint8, masks (T, K, H, W) uint8 (0/1), labels (T, H, W) uint8,
    flows (T, 2, H, W) float32, n_objects int, brightness float32, channel_order (3,) int64;
    other keys pass through. Frames, masks and labels travel as bytes (a quarter and an eighth
    of float32 and int64: less to copy into pinned memory and to the GPU) and become float and
    long on the device."""

    def __call__(self, clip: Clip, rng: np.random.Generator) -> Clip:
        def stack(key: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.stack(clip[key])))

        return {**clip,
                'frames': stack('frames').permute(0, 3, 1, 2).contiguous(),
                'masks': stack('masks').to(torch.uint8),
                'labels': stack('labels').to(torch.uint8),
                'flows': stack('flows').float().permute(0, 3, 1, 2).contiguous(),
                'n_objects': int(clip['n_objects']),
                'brightness': torch.tensor(clip['brightness'], dtype=torch.float32),
                'channel_order': torch.as_tensor(clip['channel_order'], dtype=torch.long)}


STAGES = ('image', 'video')


def build_transforms(cfg, stage: str) -> Compose:
    """The training augmentation of a stage: 'image' (static-image pretraining, IMAGE affine)
    or 'video' (main training, VIDEO affine), in the SPEC 5 order; the normalisation follows on
    the device (normalise_frames)."""
    if stage not in STAGES:
        raise ValueError(f'unknown augmentation stage {stage!r}; expected one of {STAGES}')
    aug = cfg.TRAIN.AUGMENTATION
    affine = f'AFFINE_{stage.upper()}_'
    ignore_index = cfg.CONST.IGNORE_IDX
    return Compose([
        Resize(aug.RESIZE_SIZE, aug.RESIZE_KEEP_RATIO),
        RandomAffine(aug[affine + 'DEGREES'], aug[affine + 'SCALE'], aug[affine + 'SHEARS'],
                     aug.AFFINE_FRAME_FILL_COLOR, aug.AFFINE_MASK_FILL_COLOR),
        RandomCrop(aug.CROP_SIZE, aug.AFFINE_FRAME_FILL_COLOR, ignore_index),
        ReorganizeObjectIds(ignore_index),
        ToOneHot(cfg.TRAIN.N_MAX_OBJECTS, ignore_index),
        Brightness(aug.BRIGHTNESS),
        RandomChannelPermutation(),
        ToTensor(),
    ])
