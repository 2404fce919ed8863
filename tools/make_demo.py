"""Build the bundled demo clip from the DAVIS 2016 training frames.

    python tools/make_demo.py [--davis ../shared/data/davis2016-train] [--out demo]

One sequence gives the scene and object 1; the object of a second sequence is cut out with its
annotation, scaled and pasted into every frame (object 2, in front of object 1). Writes
<out>/demo.mp4 and <out>/demo_mask.png (palette PNG of frame 0, ids 1 and 2).
"""
import argparse
import os
import sys
from typing import Tuple

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.io import read_frame, read_mask, write_palette_mask  # noqa: E402
from utils.video_io import VideoWriter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DAVIS = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'davis2016-train')


def load(davis: str, sequence: str, index: int, size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Frame (RGB) and object mask (bool) of a sequence, resized to `size` (W, H)."""
    stem = f'{index:05d}'
    frame = read_frame(os.path.join(davis, 'JPEGImages', '480p', sequence, f'{stem}.jpg'))
    mask = read_mask(os.path.join(davis, 'Annotations', '480p', sequence, f'{stem}.png'))
    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) != 0
    return frame, mask


def paste(frame: np.ndarray, ids: np.ndarray, obj_frame: np.ndarray, obj_mask: np.ndarray,
          offset: Tuple[int, int]) -> None:
    """Blend the object of (obj_frame, obj_mask) into frame with its top-left corner at offset
    (x >= 0, y >= 0), in place; its pixels become id 2."""
    x, y = offset
    height = min(obj_mask.shape[0], frame.shape[0] - y)
    width = min(obj_mask.shape[1], frame.shape[1] - x)
    region = (slice(y, y + height), slice(x, x + width))
    inside = obj_mask[:height, :width]
    alpha = cv2.GaussianBlur(inside.astype(np.float32), (3, 3), 0)[..., None]
    frame[region] = np.rint(frame[region] * (1 - alpha) + obj_frame[:height, :width] * alpha)
    ids[region][inside] = 2


def build(davis: str, out: str, scene: str, pasted: str, n_frames: int, size: Tuple[int, int],
          scale: float, offset: Tuple[int, int], fps: float) -> None:
    os.makedirs(out, exist_ok=True)
    small = (int(round(size[0] * scale)), int(round(size[1] * scale)))
    with VideoWriter(os.path.join(out, 'demo.mp4'), fps, (size[1], size[0])) as writer:
        for t in range(n_frames):
            frame, mask = load(davis, scene, t, size)
            ids = mask.astype(np.uint8)
            paste(frame, ids, *load(davis, pasted, t, small), offset)
            writer.write(frame)
            if t == 0:
                write_palette_mask(os.path.join(out, 'demo_mask.png'), ids)
    print(f'{writer.path}: {n_frames} frames of {size[0]}x{size[1]}, '
          f'{os.path.getsize(writer.path) / 1024:.0f} KiB; {os.path.join(out, "demo_mask.png")}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--davis', default=DEFAULT_DAVIS, help='DAVIS 2016 train folder (DAVIS 2017 layout)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'demo'))
    parser.add_argument('--scene', default='hike', help='sequence giving the scene and object 1')
    parser.add_argument('--pasted', default='lucia', help='sequence whose object is pasted as object 2')
    parser.add_argument('--frames', type=int, default=40)
    parser.add_argument('--size', type=int, nargs=2, default=(480, 270), metavar=('W', 'H'))
    parser.add_argument('--scale', type=float, default=0.6, help='size of the pasted object')
    parser.add_argument('--offset', type=int, nargs=2, default=(10, 110), metavar=('X', 'Y'),
                        help='where the top-left corner of the scaled pasted frame goes')
    parser.add_argument('--fps', type=float, default=24.0)
    args = parser.parse_args()
    build(args.davis, args.out, args.scene, args.pasted, args.frames, tuple(args.size), args.scale,
          tuple(args.offset), args.fps)


if __name__ == '__main__':
    main()
