"""DAVIS 2017 and DAVIS 2016 videos from the official folder layouts.

A sequence runs on every frame; its input mask is the annotation of frame 0. Its ground truth is
every annotated frame, unless only frame 0 is annotated (test-dev: no public ground truth).
"""
import os
from typing import Dict, List, Tuple

from datasets.layout import list_stems, require_dir, require_file
from datasets.video import Video
from utils.io import DataError
from utils.output_safety import check_name, check_names

DAVIS_SPLITS = ('train', 'val', 'test-dev')
DAVIS2016_SPLITS = ('train', 'val')
LAYOUT = ('<root>/ImageSets/2017/<split>.txt (one sequence a line), '
          '<root>/JPEGImages/<res>/<seq>/00000.jpg, <root>/Annotations/<res>/<seq>/00000.png')
LAYOUT_2016 = ('<root>/ImageSets/2016/<split>.txt (one sequence a line) or the 2016 release '
               '<root>/ImageSets/<res>/<split>.txt (lines "/JPEGImages/<res>/<seq>/00000.jpg '
               '/Annotations/<res>/<seq>/00000.png"), with <root>/JPEGImages/<res>/<seq>/*.jpg and '
               '<root>/Annotations/<res>/<seq>/*.png')


def list_davis(root: str, split: str, resolution: str = '480p') -> List[Video]:
    """DAVIS 2017 sequences listed in <root>/ImageSets/2017/<split>.txt, in that order."""
    split_file = os.path.join(root, 'ImageSets', '2017', f'{split}.txt')
    return [_folder_sequence(root, resolution, name, split_file, False, LAYOUT)
            for name in _read_sequence_list(split_file, LAYOUT)]


def list_davis2016(root: str, split: str, resolution: str = '480p') -> List[Video]:
    """DAVIS 2016 sequences (binary: any non-zero label is the object) of `split`.

    The list is <root>/ImageSets/2016/<split>.txt (DAVIS 2017 folder), else the 2016 release's
    <root>/ImageSets/<res>/<split>.txt of frame and annotation paths.
    """
    split_file = os.path.join(root, 'ImageSets', '2016', f'{split}.txt')
    if os.path.isfile(split_file):
        return [_folder_sequence(root, resolution, name, split_file, True, LAYOUT_2016)
                for name in _read_sequence_list(split_file, LAYOUT_2016)]
    release_file = os.path.join(root, 'ImageSets', resolution, f'{split}.txt')
    if os.path.isfile(release_file):
        return _release_sequences(root, release_file)
    raise DataError(f'{root}: no DAVIS 2016 split list (neither {split_file} nor {release_file}); '
                    f'expected the layout {LAYOUT_2016}')


def _read_sequence_list(path: str, layout: str) -> List[str]:
    require_file(path, 'split list', layout)
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DataError(f'{path}: the split list is empty')
    return check_names(names, path)


def _folder_sequence(root: str, resolution: str, name: str, split_file: str, binary: bool,
                     layout: str) -> Video:
    """A sequence whose frames are the .jpg files of its folder."""
    listed = f'of sequence {name!r} (listed in {split_file})'
    frame_dir = require_dir(os.path.join(root, 'JPEGImages', resolution, name),
                            f'frame folder {listed}', layout)
    mask_dir = require_dir(os.path.join(root, 'Annotations', resolution, name),
                           f'annotation folder {listed}', layout)
    stems = list_stems(frame_dir, '.jpg')
    if not stems:
        raise DataError(f'{frame_dir}: no .jpg frames in the folder {listed}')
    return _video(name, [os.path.join(frame_dir, f'{stem}.jpg') for stem in stems],
                  [os.path.join(mask_dir, f'{stem}.png') for stem in stems], binary, layout)


def _release_sequences(root: str, list_file: str) -> List[Video]:
    """Sequences of a 2016 release list, in the order of their first line."""
    sequences: Dict[str, Tuple[List[str], List[str]]] = {}
    with open(list_file) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataError(f'{list_file}:{number}: expected "<frame.jpg> <annotation.png>", '
                                f'got {line.strip()!r}')
            frame, mask = (os.path.join(root, path.lstrip('/')) for path in fields)
            name = check_name(os.path.basename(os.path.dirname(frame)), f'{list_file}:{number}')
            frames, masks = sequences.setdefault(name, ([], []))
            frames.append(frame)
            masks.append(mask)
    if not sequences:
        raise DataError(f'{list_file}: the split list is empty')
    for name, (frames, _) in sequences.items():
        missing = [path for path in frames if not os.path.isfile(path)]
        if missing:
            raise DataError(f'{missing[0]}: frame of sequence {name!r} (listed in {list_file}) not '
                            f'found, {len(missing)} of {len(frames)} missing; expected the layout '
                            f'{LAYOUT_2016}')
    return [_video(name, frames, masks, True, LAYOUT_2016)
            for name, (frames, masks) in sequences.items()]


def _video(name: str, frame_paths: List[str], mask_paths: List[str], binary: bool,
           layout: str) -> Video:
    """mask_paths[i]: where frame i's annotation would be; frame 0's must exist."""
    require_file(mask_paths[0], f'first-frame annotation of sequence {name!r}', layout)
    annotated = {index: path for index, path in enumerate(mask_paths) if os.path.isfile(path)}
    return Video(name=name, frame_paths=frame_paths, given_masks={0: mask_paths[0]},
                 output_names=[os.path.splitext(os.path.basename(p))[0] for p in frame_paths],
                 ground_truth=annotated if len(annotated) > 1 else {}, binary=binary)
