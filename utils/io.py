"""Reading and writing frames, palette masks and Middlebury .flo flows.

Every file is written atomically: into a hidden temporary file beside it (named with
TEMPORARY_PREFIX, a tag of the host and the writing process's id), then renamed into place with
the mode the umask asks for. A failed write removes the temporary file and raises WriteError naming the file;
utils.output_safety.remove_stale_temporaries clears what a killed process left behind.
"""
import hashlib
import json
import os
import socket
import stat
import tempfile
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image

from utils.cli import UserError, describe_os_error

FLO_MAGIC = 202021.25  # b'PIEH' read as a little-endian float32
TEMPORARY_PREFIX = '.rmnet-partial-'
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]   # process ids are per host
SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


class DataError(UserError, ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


class WriteError(DataError):
    """A file that could not be written (full disk, no permission, ...); the message names it."""


def require_regular_file(path: str, what: str) -> str:
    """`path` when it is a regular file (a FIFO or a device would block or never end)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as e:
        raise DataError(f'{path}: {what} not found') from e
    except OSError as e:
        raise DataError(f'{path}: {what} cannot be read ({describe_os_error(e)})') from e
    if not stat.S_ISREG(mode):
        kind = 'a folder' if stat.S_ISDIR(mode) else 'not a regular file (a pipe, socket or device)'
        raise DataError(f'{path}: {what} is {kind}')
    return path


def file_mode() -> int:
    """The mode a new file gets from the umask (0o644 under umask 022)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def temporary_path(path: str) -> str:
    """Create and return an empty hidden temporary file beside `path` (same extension), named
    <TEMPORARY_PREFIX><HOST_TAG>-<process id>-<stem>.<random><extension>."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, extension = os.path.splitext(os.path.basename(path))
    handle, temporary = tempfile.mkstemp(prefix=f'{TEMPORARY_PREFIX}{HOST_TAG}-{os.getpid()}-{stem}.',
                                         suffix=extension, dir=folder)
    os.close(handle)
    return temporary


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
    """An image file as (H, W, 3) uint8 RGB (PIL decoding, as the published code); 16-bit
    greyscale frames are scaled to 8 bits."""
    require_regular_file(path, 'frame')
    try:
        with Image.open(path) as image:
            if image.mode in SIXTEEN_BIT_MODES:
                grey = np.array(image).astype(np.float64)
                if grey.min() < 0 or grey.max() > 65535:
                    raise DataError(f'{path}: {image.mode} frame with values outside 0..65535')
                return np.repeat(np.rint(grey / 257.0).astype(np.uint8)[..., None], 3, axis=2)
            return np.array(image.convert('RGB'))
    except FileNotFoundError as e:
        raise DataError(f'{path}: frame not found') from e
    except OSError as e:
        raise DataError(f'{path}: unreadable image ({e})') from e


def read_mask(path: str) -> np.ndarray:
    """A palette (or greyscale) PNG as (H, W) uint8 label ids."""
    require_regular_file(path, 'mask')
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


def atomic_write(path: str, write: Callable[[str], None], durable: bool = False) -> None:
    """Call write(temporary) for a temporary file beside `path`, then rename it into place with
    the umask's mode (durable: synced to disk first). On any failure, interruptions included,
    the temporary file is removed and `path` is left as it was; an OSError becomes a WriteError
    naming `path`."""
    temporary: Optional[str] = None
    try:
        temporary = temporary_path(path)
        write(temporary)
        os.chmod(temporary, file_mode())
        if durable:
            with open(temporary, 'rb') as f:
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as e:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(e, OSError):
            previous = 'the earlier file is kept' if os.path.exists(path) else 'nothing was written there'
            raise WriteError(f'{path}: cannot be written ({e.strerror or e}); {previous}') from e
        raise


def write_json(path: str, content: Any, indent: int = 1) -> None:
    """`content` as a JSON file, written atomically."""
    def write(temporary: str) -> None:
        with open(temporary, 'w') as f:
            json.dump(content, f, indent=indent)
    atomic_write(path, write)


def check_new_result(path: str) -> str:
    """`path` for a result file that must not exist yet (results are never replaced): a
    DataError naming it when it does."""
    if os.path.exists(path):
        raise DataError(f'{path}: already exists; choose another --out (earlier results are kept)')
    return path


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
