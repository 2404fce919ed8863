"""Build the small DAVIS 2016 subset bundled with the tests (tests/data/davis2016-train).

    python tools/make_test_data.py [--davis ../shared/data/davis2016-train] [--out tests/data/davis2016-train]

Takes the first frames of a few DAVIS 2016 training sequences, resizes them (frames with area
averaging, annotations with nearest neighbour) and writes them in the DAVIS 2017 layout the
loaders read: JPEGImages/480p/<seq>/%05d.jpg, Annotations/480p/<seq>/%05d.png (palette,
0 background, 1 the object) and ImageSets/2016/train.txt, plus a README with the licence.
The output folder must not exist yet (nothing is ever overwritten).
"""
import argparse
import os
import sys
from typing import Optional, Sequence, Tuple

import cv2
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.io import DataError, read_frame, read_mask, write_palette_mask  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DAVIS = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'davis2016-train')
DEFAULT_OUT = os.path.join(ROOT, 'tests', 'data', 'davis2016-train')
SEQUENCES = ('bear', 'boat', 'car-turn', 'dog-agility', 'hike', 'lucia', 'rollerblade')

README = """# DAVIS 2016 frames for the tests

The first {n_frames} frames of {n_sequences} DAVIS 2016 training sequences, resized to
{width}x{height}: {names}.

Layout of DAVIS 2017: `JPEGImages/480p/<seq>/%05d.jpg` (JPEG quality {quality}),
`Annotations/480p/<seq>/%05d.png` (palette PNG, 0 = background, 1 = the object) and
`ImageSets/2016/train.txt`. Built by `tools/make_test_data.py`.

Source: DAVIS 2016, F. Perazzi, J. Pont-Tuset, B. McWilliams, L. Van Gool, M. Gross,
A. Sorkine-Hornung, "A Benchmark Dataset and Evaluation Methodology for Video Object
Segmentation", CVPR 2016 (https://davischallenge.org). The DAVIS images and annotations are
licensed under the Creative Commons Attribution 4.0 License
(https://creativecommons.org/licenses/by/4.0/); they were resized and re-encoded here. Some
DAVIS clips come from YouTube: see the terms of use at https://davischallenge.org.
"""


def build(davis: str, out: str, sequences: Sequence[str], n_frames: int, size: Tuple[int, int],
          quality: int) -> None:
    """Write the subset of `davis` to the new folder `out` (frames resized to `size` = (W, H))."""
    if os.path.exists(out):
        raise DataError(f'{out}: already exists; remove it or choose another --out')
    for sequence in sequences:
        for kind, extension in (('JPEGImages', '.jpg'), ('Annotations', '.png')):
            folder = os.path.join(davis, kind, '480p', sequence)
            if len([n for n in os.listdir(folder) if n.endswith(extension)]) < n_frames:
                raise DataError(f'{folder}: fewer than {n_frames} {extension} files')
    for sequence in sequences:
        frame_dir = os.path.join(out, 'JPEGImages', '480p', sequence)
        os.makedirs(frame_dir)
        for t in range(n_frames):
            stem = f'{t:05d}'
            frame = read_frame(os.path.join(davis, 'JPEGImages', '480p', sequence, f'{stem}.jpg'))
            mask = read_mask(os.path.join(davis, 'Annotations', '480p', sequence, f'{stem}.png'))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
            Image.fromarray(frame).save(os.path.join(frame_dir, f'{stem}.jpg'), quality=quality)
            write_palette_mask(os.path.join(out, 'Annotations', '480p', sequence, f'{stem}.png'),
                               (mask != 0).astype('uint8'))
    os.makedirs(os.path.join(out, 'ImageSets', '2016'))
    with open(os.path.join(out, 'ImageSets', '2016', 'train.txt'), 'w') as f:
        f.write(''.join(f'{sequence}\n' for sequence in sequences))
    with open(os.path.join(out, 'README.md'), 'w') as f:
        f.write(README.format(n_frames=n_frames, n_sequences=len(sequences), names=', '.join(sequences),
                              width=size[0], height=size[1], quality=quality))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--davis', default=DEFAULT_DAVIS, help='DAVIS 2016 train folder (DAVIS 2017 layout)')
    parser.add_argument('--out', default=DEFAULT_OUT, help='new folder to write')
    parser.add_argument('--sequences', nargs='+', default=list(SEQUENCES))
    parser.add_argument('--frames', type=int, default=12, help='first frames kept per sequence')
    parser.add_argument('--size', type=int, nargs=2, default=(256, 144), metavar=('W', 'H'))
    parser.add_argument('--quality', type=int, default=85, help='JPEG quality')
    args = parser.parse_args(argv)
    try:
        if not os.path.isdir(args.davis):
            raise DataError(f'{args.davis}: no such folder (give the DAVIS 2016 train folder with --davis)')
        build(args.davis, args.out, args.sequences, args.frames, tuple(args.size), args.quality)
    except (DataError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
