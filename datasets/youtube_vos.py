"""YouTube-VOS 2018 / 2019 videos from the official folder layout (a meta.json per split).

valid / test: the frames to output are the union of the frames meta.json lists for the video's
objects; the input masks are the annotations of the frames where objects first appear. When
<root>/<split>_all_frames/JPEGImages/<video>/ exists the video runs on every frame from the first
listed one to the last. train: every annotated frame, with its annotation as ground truth.
"""
import json
import os
from typing import Dict, List

from datasets.layout import list_stems, require_dir, require_file, require_stems
from datasets.video import Video
from utils.io import DataError
from utils.output_safety import check_name, check_names

SPLITS = ('train', 'valid', 'test')
LAYOUT = ('<root>/<split>/meta.json ({"videos": {<video>: {"objects": {<id>: {"category": ..., '
          '"frames": ["00000", ...]}}}}}), <root>/<split>/JPEGImages/<video>/<frame>.jpg, '
          '<root>/<split>/Annotations/<video>/<frame>.png, optionally '
          '<root>/<split>_all_frames/JPEGImages/<video>/<frame>.jpg')

ObjectFrames = Dict[str, List[str]]   # object id -> the frame stems it is listed in, sorted


def list_youtube_vos(root: str, split: str) -> List[Video]:
    """The videos of `split` ('train', 'valid' or 'test') under `root`, sorted by name."""
    meta = _read_meta(os.path.join(root, split, 'meta.json'))
    build = _annotated_video if split == 'train' else _listed_video
    return [build(root, split, name, objects) for name, objects in sorted(meta.items())]


def _read_meta(path: str) -> Dict[str, ObjectFrames]:
    """A meta.json as video -> object id -> sorted frame stems."""
    require_file(path, 'YouTube-VOS meta.json', LAYOUT)
    try:
        with open(path) as f:
            videos = json.load(f)['videos']
        meta = {name: {str(obj): sorted(info['frames']) for obj, info in video['objects'].items()}
                for name, video in videos.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f'{path}: not a YouTube-VOS meta.json ({e!r}); expected the layout '
                        f'{LAYOUT}') from e
    for name, objects in meta.items():
        check_name(name, path, 'video name')
        if not objects or not all(objects.values()):
            raise DataError(f'{path}: video {name!r} lists no objects or an object without frames')
        for frames in objects.values():
            check_names(frames, path, f'frame name of video {name!r}')
    return meta


def _first_frames(objects: ObjectFrames) -> List[str]:
    """The frames where at least one object first appears."""
    return sorted({frames[0] for frames in objects.values()})


def _listed_video(root: str, split: str, name: str, objects: ObjectFrames) -> Video:
    listed = sorted(set().union(*objects.values()))
    mask_dir = os.path.join(root, split, 'Annotations', name)
    masks = {stem: require_file(os.path.join(mask_dir, f'{stem}.png'),
                                f'annotation of video {name!r} where an object first appears',
                                LAYOUT)
             for stem in _first_frames(objects)}
    all_frames_dir = os.path.join(root, f'{split}_all_frames', 'JPEGImages', name)
    if os.path.isdir(all_frames_dir):
        frame_dir, stems = all_frames_dir, list_stems(all_frames_dir, '.jpg')
        require_stems(frame_dir, stems, listed, f'frames of video {name!r} listed in meta.json',
                      '.jpg')
        stems = stems[stems.index(listed[0]):stems.index(listed[-1]) + 1]
    else:
        frame_dir = require_dir(os.path.join(root, split, 'JPEGImages', name),
                                f'frame folder of video {name!r}', LAYOUT)
        require_stems(frame_dir, list_stems(frame_dir, '.jpg'), listed,
                      f'frames of video {name!r} listed in meta.json', '.jpg')
        stems = listed
    index = {stem: i for i, stem in enumerate(stems)}
    return Video(name=name, frame_paths=[os.path.join(frame_dir, f'{s}.jpg') for s in stems],
                 given_masks={index[stem]: path for stem, path in masks.items()},
                 output_names=stems,
                 output_frames=[index[stem] for stem in listed] if stems != listed else None)


def _annotated_video(root: str, split: str, name: str, objects: ObjectFrames) -> Video:
    frame_dir = require_dir(os.path.join(root, split, 'JPEGImages', name),
                            f'frame folder of video {name!r}', LAYOUT)
    mask_dir = require_dir(os.path.join(root, split, 'Annotations', name),
                           f'annotation folder of video {name!r}', LAYOUT)
    stems = list_stems(mask_dir, '.png')
    require_stems(frame_dir, list_stems(frame_dir, '.jpg'), stems,
                  f'frames of the annotations of video {name!r}', '.jpg')
    first = _first_frames(objects)
    require_stems(mask_dir, stems, first,
                  f'annotations where the objects of video {name!r} first appear', '.png')
    masks = [os.path.join(mask_dir, f'{stem}.png') for stem in stems]
    index = {stem: i for i, stem in enumerate(stems)}
    return Video(name=name, frame_paths=[os.path.join(frame_dir, f'{s}.jpg') for s in stems],
                 given_masks={index[stem]: masks[index[stem]] for stem in first},
                 output_names=stems, ground_truth=dict(enumerate(masks)))
