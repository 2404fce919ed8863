"""Reading and writing frames, palette masks and Middlebury .flo flows (atomic writes)."""
import os
import tempfile
from typing import Callable

import numpy as np
from PIL import Image

FLO_MAGIC = 202021.25  # b'PIEH' read as a little-endian float32


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map, (256, 3) uint8: id 1 red, 2 green, 3 olive, ..."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, colour = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[index] = colour
    return palette


PALETTE = davis_palette()


def read_frame(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (PIL decoding, as the published code)."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert('RGB'))
    except FileNotFoundError as e:
        raise DataError(f'{path}: frame not found') from e
    except OSError as e:
        raise DataError(f'{path}: unreadable image ({e})') from e


def read_mask(path: str) -> np.ndarray:
    """A palette (or greyscale) PNG as (H, W) uint8 label ids."""
    try:
        with Image.open(path) as image:
            if image.mode in ('P', 'L'):
                return np.array(image)
            if image.mode in ('1', 'I', 'I;16'):
                return np.array(image).astype(np.uint8)
            raise DataError(f'{path}: expected a palette or greyscale mask, got mode {image.mode}')
    except FileNotFoundError as e:
        raise DataError(f'{path}: mask not found') from e
    except OSError as e:
        raise DataError(f'{path}: unreadable mask ({e})') from e


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call write(temporary_path) beside `path`, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    handle, temporary = tempfile.mkstemp(prefix='.tmp-', suffix=suffix, dir=folder)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_palette_mask(path: str, mask: np.ndarray) -> None:
    """(H, W) integer ids -> palette PNG (DAVIS colours), written atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f'{path}: a mask must be (H, W), got shape {mask.shape}')
    image = Image.fromarray(mask.astype(np.uint8), mode='P')
    image.putpalette(PALETTE.reshape(-1).tolist())
    atomic_write(path, lambda temporary: image.save(temporary, format='PNG'))


def write_image(path: str, image: np.ndarray) -> None:
    """(H, W, 3) uint8 RGB -> image file (format from the extension), written atomically."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    file_format = 'JPEG' if path.lower().endswith(('.jpg', '.jpeg')) else 'PNG'
    atomic_write(path, lambda temporary: picture.save(temporary, format=file_format))


def read_flo(path: str) -> np.ndarray:
    """Middlebury .flo -> (H, W, 2) float32 (u, v)."""
    try:
        with open(path, 'rb') as f:
            header = f.read(12)
            if len(header) < 12:
                raise DataError(f'{path}: too short for a .flo header')
            magic = np.frombuffer(header[:4], dtype='<f4')[0]
            if magic != FLO_MAGIC:
                raise DataError(f'{path}: not a .flo file (bad magic {header[:4]!r})')
            width, height = (int(v) for v in np.frombuffer(header[4:12], dtype='<i4'))
            if width <= 0 or height <= 0 or width * height > 1 << 28:
                raise DataError(f'{path}: implausible .flo size {width}x{height}')
            data = np.frombuffer(f.read(), dtype='<f4')
    except FileNotFoundError as e:
        raise DataError(f'{path}: flow file not found') from e
    if data.size != width * height * 2:
        raise DataError(f'{path}: expected {width * height * 2} values for {width}x{height}, '
                        f'found {data.size} (truncated?)')
    return data.reshape(height, width, 2).astype(np.float32)


def write_flo(path: str, flow: np.ndarray) -> None:
    """(H, W, 2) flow -> Middlebury .flo, written atomically."""
    flow = np.asarray(flow, dtype='<f4')
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'{path}: a flow must be (H, W, 2), got shape {flow.shape}')
    height, width = flow.shape[:2]

    def write(temporary: str) -> None:
        with open(temporary, 'wb') as f:
            f.write(b'PIEH')
            f.write(np.array([width, height], dtype='<i4').tobytes())
            f.write(np.ascontiguousarray(flow).tobytes())

    atomic_write(path, write)
