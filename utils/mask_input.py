"""A user's object masks (palette, greyscale/binary or RGB colour images) as object ids 1..n.

Kinds of mask files:
- palette PNG: the palette indexes are the object ids (255 is DAVIS "void", read as background);
- one channel (or RGB with equal channels): when every non-zero value is below 128, or below
  128 and 255 (DAVIS "void", read as background), each non-zero value below 128 is an object id;
  otherwise it is a greyscale/binary mask of one object (pixels > 127, so antialiased edges
  split evenly);
- RGB colour mask: black is the background and each main colour an object. Main colours are
  those with at least MIN_CORE_PIXELS pixels whose 4 neighbours have the same colour (blended
  antialiasing or resizing edges are one pixel wide, so they have none); every other pixel
  goes to the nearest main colour. Colours of the DAVIS palette keep their palette index as id.
  A photo given by mistake is refused: too few of its pixels are near a main colour.
A single file (read_first_mask) is renumbered 1..n, `labels` giving the user's id of each
object; the masks of several frames (read_given_masks) keep the user's ids. A binary mask
given for a later frame is a new object with the next free id.
"""
import argparse
import logging
import os
import re
from typing import Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from utils.io import PALETTE, DataError, require_regular_file

logger = logging.getLogger(__name__)

VOID_ID = 255
MIN_CORE_PIXELS = 9        # interior pixels a colour needs to count as an object's colour
MERGE_DISTANCE = 24.0      # main colours closer than this (RGB distance) are one colour (JPEG noise)
PALETTE_DISTANCE = 10.0    # a main colour this close to a DAVIS palette colour takes its index
MIN_FLAT_FRACTION = 0.7    # share of pixels a colour mask has within MERGE_DISTANCE of a main colour


class MaskError(DataError):
    """A mask file that cannot be used; the message names the file and the problem."""


class InputMask(NamedTuple):
    """One mask file read as object ids."""
    ids: np.ndarray            # (H, W) uint8: 0 background, 1..n objects
    n_objects: int
    labels: Tuple[int, ...]    # labels[k - 1]: the user's id of object k (palette index, grey value, ...)
    colours: np.ndarray        # (n, 3) uint8 RGB: the colour of each object in the user's file


class GivenMasks(NamedTuple):
    """The masks given for several frames, with one object numbering shared by all of them."""
    masks: Dict[int, np.ndarray]    # frame index -> (H, W) uint8 user ids (objects of that file only)
    n_objects: int
    labels: Tuple[int, ...]
    colours: np.ndarray             # (n, 3) uint8 RGB
    first_frames: Tuple[int, ...]   # first_frames[k - 1]: the first frame whose mask holds object k


BINARY = 'binary'   # the key of the object of a binary mask: a new object in every later file


class _Object(NamedTuple):
    key: Hashable                   # what identifies the object across files: its id or its colour
    label: Optional[int]            # the user's id, None for a colour outside the DAVIS palette
    colour: Tuple[int, int, int]


def _single_channel(values: np.ndarray) -> Tuple[np.ndarray, List[_Object]]:
    """Greyscale/binary (one object) or an id map (values < 128, with 255 as void), as (index
    map, objects)."""
    top = int(values.max())
    if top == 0:
        return np.zeros(values.shape, np.int32), []
    others = values[(values != 0) & (values != VOID_ID)]
    if top == VOID_ID and others.size and others.max() < 128:      # an id mask with void
        values = np.where(values == VOID_ID, 0, values)
        top = int(others.max())
    half = 128 if top <= 255 else 32768
    if top >= half:
        return (values >= half).astype(np.int32), [_Object(BINARY, 1, tuple(PALETTE[1].tolist()))]
    ids = sorted(int(v) for v in np.unique(values) if v != 0)
    lookup = np.zeros(top + 1, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1)
    return lookup[values], [_Object(v, v, tuple(PALETTE[v].tolist())) for v in ids]


def _palette(path: str, image: Image.Image) -> Tuple[np.ndarray, List[_Object]]:
    values = np.array(image)
    colours = np.zeros((256, 3), np.uint8)
    entries = np.array(image.getpalette() or [], np.uint8).reshape(-1, 3)[:256]
    colours[:len(entries)] = entries
    if (values == VOID_ID).any():
        logger.info('%s: void pixels (255) read as background', path)
        values = np.where(values == VOID_ID, 0, values)
    ids = [int(v) for v in np.unique(values) if v != 0]
    lookup = np.zeros(256, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1)
    return lookup[values], [_Object(v, v, tuple(colours[v].tolist())) for v in ids]


def _main_colours(packed: np.ndarray, unique: np.ndarray, inverse: np.ndarray) -> List[int]:
    """Indexes into `unique` of the colours that fill object interiors, most frequent first."""
    padded = np.pad(packed, 1, mode='edge')
    centre = padded[1:-1, 1:-1]
    interior = ((centre == padded[:-2, 1:-1]) & (centre == padded[2:, 1:-1]) &
                (centre == padded[1:-1, :-2]) & (centre == padded[1:-1, 2:]))
    core = np.bincount(inverse[interior], minlength=len(unique))
    return [int(i) for i in np.argsort(-core, kind='stable') if core[i] >= MIN_CORE_PIXELS]


def _colour(path: str, rgb: np.ndarray, max_objects: int) -> Tuple[np.ndarray, List[_Object]]:
    """A colour mask as (index map, objects); see the module docstring."""
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    unique, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(packed.shape)
    unique_rgb = np.stack([(unique >> 16) & 255, (unique >> 8) & 255, unique & 255], axis=1)
    unique_rgb = unique_rgb.astype(np.float32)
    mains = [np.zeros(3, np.float32)]   # black, the background, comes first
    for index in _main_colours(packed, unique, inverse):
        colour = unique_rgb[index]
        if min(np.linalg.norm(colour - main) for main in mains) >= MERGE_DISTANCE:
            mains.append(colour)
            if len(mains) > max_objects + 1:
                raise MaskError(f'{path}: more than {max_objects} colours fill object-sized areas, at most '
                                f'{max_objects} objects are supported (is this file an object mask?)')
    main_rgb = np.stack(mains)
    distances = np.linalg.norm(unique_rgb[:, None, :] - main_rgb[None, :, :], axis=2)
    flat = counts[distances.min(axis=1) < MERGE_DISTANCE].sum() / packed.size
    if flat < MIN_FLAT_FRACTION:
        raise MaskError(f'{path}: only {flat:.0%} of the pixels have one of its main colours; '
                        f'a colour mask is made of flat colours (is this file an object mask?)')
    index_map = np.argmin(distances, axis=1).astype(np.int32)[inverse]
    if len(mains) == 1:
        return index_map, []
    palette = PALETTE[None, 1:VOID_ID].astype(np.float32)
    palette_distance = np.linalg.norm(main_rgb[1:, None, :] - palette, axis=2)
    colours = [tuple(int(c) for c in main) for main in main_rgb[1:]]
    if (palette_distance.min(axis=1) <= PALETTE_DISTANCE).all():
        labels = [int(i) + 1 for i in palette_distance.argmin(axis=1)]
        order = np.argsort(labels, kind='stable')
        objects = [_Object(labels[i], labels[i], colours[i]) for i in order]
    else:
        present, first_pixel = np.unique(index_map.ravel(), return_index=True)
        first = dict(zip(present.tolist(), first_pixel.tolist()))
        order = sorted(range(len(colours)), key=lambda i: first[i + 1])
        objects = [_Object(colours[i], None, colours[i]) for i in order]
    lookup = np.zeros(len(mains), np.int32)
    lookup[np.asarray(order) + 1] = np.arange(1, len(order) + 1)
    return lookup[index_map], objects


def _decode(path: str, max_objects: int) -> Tuple[np.ndarray, List[_Object]]:
    """A mask file as (H, W) int32 map (0 background, i + 1 for objects[i]) and its objects."""
    try:
        require_regular_file(path, 'mask file')
    except DataError as e:
        raise MaskError(str(e)) from e
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == 'P':
                return _palette(path, image)
            if image.mode == '1':
                return _single_channel(np.array(image).astype(np.uint8))
            if image.mode in ('L', 'LA', 'I', 'I;16', 'I;16B', 'I;16L'):
                channel = image.getchannel(0) if image.mode == 'LA' else image
                return _single_channel(np.array(channel).astype(np.int64))
            rgba = np.array(image.convert('RGBA'))
    except FileNotFoundError as e:
        raise MaskError(f'{path}: mask file not found') from e
    except OSError as e:
        raise MaskError(f'{path}: unreadable mask image ({e})') from e
    rgb = np.where(rgba[..., 3:] == 0, 0, rgba[..., :3]).astype(np.uint8)
    if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
        return _single_channel(rgb[..., 0].astype(np.int64))
    return _colour(path, rgb, max_objects)


def _fit(path: str, index_map: np.ndarray, size: Optional[Tuple[int, int]], resize: bool) -> np.ndarray:
    """Check the mask size against `size` (H, W), or resize it with nearest-neighbour."""
    if size is None or tuple(index_map.shape) == tuple(size):
        return index_map
    height, width = index_map.shape
    if not resize:
        raise MaskError(f'{path}: the mask is {height}x{width} (HxW) but the video frames are '
                        f'{size[0]}x{size[1]}; give a mask of the frame size, or pass --resize-mask '
                        f'(resize=True from Python) to resize it')
    if abs(height / width - size[0] / size[1]) > 0.01 * size[0] / size[1]:
        logger.warning('%s: resizing a %dx%d mask to %dx%d changes its aspect ratio',
                       path, height, width, size[0], size[1])
    resized = cv2.resize(index_map.astype(np.uint8), (int(size[1]), int(size[0])),
                         interpolation=cv2.INTER_NEAREST)
    lost = sorted(set(np.unique(index_map).tolist()) - set(np.unique(resized).tolist()))
    if lost:
        logger.warning('%s: object(s) %s vanished when resizing the mask', path, lost)
    return resized.astype(np.int32)


def _read(path: str, size: Optional[Tuple[int, int]], resize: bool,
          max_objects: int) -> Tuple[np.ndarray, List[_Object]]:
    index_map, objects = _decode(path, max_objects)
    if not objects:
        raise MaskError(f'{path}: the mask holds no object (every pixel is background)')
    if len(objects) > max_objects:
        raise MaskError(f'{path}: {len(objects)} objects found, at most {max_objects} are supported '
                        f'(is this file an object mask?)')
    return _fit(path, index_map, size, resize), objects


def read_first_mask(path: str, size: Optional[Tuple[int, int]] = None, resize: bool = False,
                    max_objects: int = 10) -> InputMask:
    """A mask file as object ids 1..n; `size` (H, W) is the video's, checked or resized to."""
    index_map, objects = _read(path, size, resize, max_objects)
    labels = tuple(obj.label if obj.label is not None else k for k, obj in enumerate(objects, 1))
    colours = np.array([obj.colour for obj in objects], np.uint8)
    return InputMask(index_map.astype(np.uint8), len(objects), labels, colours)


def parse_mask_spec(text: str) -> Tuple[int, str]:
    """The CLI form FRAME:FILE as (frame index, file); a plain FILE is for frame 0.

    Raises argparse.ArgumentTypeError, so it can be an argparse `type`. A file whose name
    starts with digits and a colon can be given as ./NAME.
    """
    match = re.fullmatch(r'(\d+):(.*)', text, flags=re.DOTALL)
    if match is None:
        if not text:
            raise argparse.ArgumentTypeError('empty mask argument; expected FILE or FRAME:FILE')
        frame = re.match(r'([^:/\\]*):(?![/\\])', text)     # not a drive letter as in C:/masks
        if frame is not None and not os.path.exists(text):
            number = frame.group(1)
            problem = ('frame numbers start at 0' if re.fullmatch(r'-\d+', number)
                       else f'{number!r} is not a frame number')
            raise argparse.ArgumentTypeError(f'{text!r}: {problem}; expected FILE or FRAME:FILE with '
                                             f'FRAME 0, 1, 2, ... (a file named so can be given as ./{text})')
        return 0, text
    if not match.group(2):
        raise argparse.ArgumentTypeError(f'{text!r}: no file after the frame number; expected FRAME:FILE')
    return int(match.group(1)), match.group(2)


def read_given_masks(specs: Sequence[Union[str, Tuple[int, str]]], size: Optional[Tuple[int, int]] = None,
                     resize: bool = False, max_objects: int = 10) -> GivenMasks:
    """Masks for several frames (FRAME:FILE strings or (frame, file) pairs), numbered together.

    An object is the same in every file when it has the same id (palette, id map, DAVIS
    colours) or the same colour (other colour masks); new ids or colours are new objects.
    """
    keys: Dict[Hashable, int] = {}
    objects: List[_Object] = []
    first_frames: List[int] = []
    read: Dict[int, Tuple[str, np.ndarray, List[_Object]]] = {}
    for spec in specs:
        frame, path = parse_mask_spec(spec) if isinstance(spec, str) else spec
        if frame in read:
            raise MaskError(f'{path}: frame {frame} already has a mask ({read[frame][0]})')
        read[frame] = (path,) + _read(path, size, resize, max_objects)
    if not read:
        raise MaskError('no mask given: at least the first frame needs one')
    numbered: Dict[int, np.ndarray] = {}
    for frame in sorted(read):
        path, index_map, file_objects = read[frame]
        lookup = np.zeros(len(file_objects) + 1, np.int32)
        for index, obj in enumerate(file_objects, 1):
            if obj.key == BINARY and objects:
                taken = {known.label if known.label is not None else k for k, known in enumerate(objects, 1)}
                free = [label for label in range(1, VOID_ID) if label not in taken]
                if not free:
                    raise MaskError(f'{path}: no object id is left for this binary mask (ids 1..{VOID_ID - 1} '
                                    f'are taken; {VOID_ID} is void)')
                label = max(taken) + 1 if max(taken) + 1 < VOID_ID else free[0]
                obj = _Object((BINARY, frame), label, tuple(PALETTE[label % len(PALETTE)].tolist()))
            if obj.key not in keys:
                keys[obj.key] = len(objects) + 1
                objects.append(obj)
                first_frames.append(frame)
            lookup[index] = keys[obj.key]
        if len(objects) > max_objects:
            raise MaskError(f'{path}: brings the number of objects to {len(objects)}, at most '
                            f'{max_objects} are supported')
        numbered[frame] = lookup[index_map]
    labels = tuple(obj.label if obj.label is not None else k for k, obj in enumerate(objects, 1))
    user_ids = np.asarray((0,) + labels, np.uint8)
    masks = {frame: user_ids[index_map] for frame, index_map in numbered.items()}
    colours = np.array([obj.colour for obj in objects], np.uint8)
    return GivenMasks(masks, len(objects), labels, colours, tuple(first_frames))
