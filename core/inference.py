"""Inference: benchmark result files, and the segmentation of a user's own video.

Python API (streaming: frames are consumed and masks produced one at a time):

    from core.inference import VideoSegmenter
    segmenter = VideoSegmenter('RMNet-DAVIS.pth', device='cuda')
    segmenter.add_object(30, mask_of_an_object_appearing_at_frame_30)   # optional
    for ids in segmenter.segment(frames, first_mask):
        ...

Benchmark results (inference_net), at the original frame size:
    DAVIS:        <out>/<sequence>/<frame>.png            and <out>/<split>.zip of them
    YouTube-VOS:  <out>/Annotations/<video>/<frame>.png   (the frames the split lists)
                  and <out>/<split>.zip holding Annotations/..., as the evaluation server takes it
    with cfg.TEST.VISUALIZE: <out>/overlay/<video>.mp4

A user's video (segment_user_video):
    <out>/masks/%05d.png                 palette PNG with the ids of the user's mask files
    <out>/overlay.mp4                    the masks drawn over the frames
    <out>/binary/<object id>/%05d.png    0/255 masks per object (binary=True)
"""
import logging
import os
import time
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from core.segmenter import VideoSegmenter, network_size
from core.sequences import benchmark_videos, output_frames, resolve_split, stream_video
from core.streaming import (SegmenterSource, experiment_dir, new_segmenter, prepare_output_dir,
                            register_later_objects, segment_stream)
from datasets.video import Video
from utils.io import DataError, atomic_write, write_image, write_palette_mask
from utils.mask_input import GivenMasks, MaskError, parse_mask_spec, read_given_masks, to_user_ids
from utils.video_io import FOLDER_FPS, FrameSource, PrefetchReader, VideoWriter, open_frames
from utils.visualization import overlay
from utils.weights import resolve_weights

__all__ = ['VideoSegmenter', 'inference_net', 'segment_user_video']

logger = logging.getLogger(__name__)

MaskSpec = Union[str, Tuple[int, str]]


def inference_net(cfg, weights: str, dataset: Optional[str] = None, split: Optional[str] = None,
                  out_dir: Optional[str] = None, short_side: Optional[int] = None) -> str:
    """Write the benchmark result files of a split (see the module docstring); return the zip's path."""
    dataset, split = resolve_split(cfg, dataset, split)
    videos = benchmark_videos(cfg, dataset, split)
    out_dir = prepare_output_dir(out_dir or experiment_dir(cfg))
    segmenters = SegmenterSource(resolve_weights(weights), cfg, short_side)
    results_dir = 'Annotations' if dataset.startswith('YOUTUBE_VOS') else ''
    logger.info('Segmenting %d videos of %s %s into %s', len(videos), dataset, split, out_dir)
    members: List[str] = []
    bar = tqdm(videos, desc=f'{dataset} {split}', unit='video')
    for video in bar:
        start = time.perf_counter()
        members += _write_results(segmenters, video, out_dir, results_dir, bool(cfg.TEST.VISUALIZE))
        bar.set_postfix(video=video.name, fps=f'{len(video) / max(time.perf_counter() - start, 1e-9):.1f}')
    zip_path = os.path.join(out_dir, f'{split}.zip')
    atomic_write(zip_path, lambda temporary: _write_zip(temporary, out_dir, members))
    logger.info('Results in %s; submission archive %s (%d masks)', out_dir, zip_path, len(members))
    return zip_path


def _write_results(segmenters: SegmenterSource, video: Video, out_dir: str, results_dir: str,
                   visualize: bool) -> List[str]:
    """Write one video's masks; return their paths relative to out_dir."""
    wanted = set(output_frames(video))
    written = []
    writer = VideoWriter(os.path.join(out_dir, 'overlay', f'{video.name}.mp4'), FOLDER_FPS) if visualize else None
    try:
        for t, (frame, ids) in enumerate(stream_video(segmenters, video)):
            if writer is not None:
                writer.write(overlay(frame, ids))
            if t in wanted:
                relative = os.path.join(results_dir, video.name, f'{video.output_names[t]}.png')
                write_palette_mask(os.path.join(out_dir, relative), ids)
                written.append(relative)
    finally:
        if writer is not None and writer.frames_written:
            writer.close()
        elif writer is not None:
            writer.discard()
    return written


def _write_zip(path: str, root: str, members: Sequence[str]) -> None:
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        for member in sorted(members):
            archive.write(os.path.join(root, member), member.replace(os.sep, '/'))


def segment_user_video(cfg, video: str, masks: Sequence[MaskSpec], weights: str = 'davis',
                       out_dir: Optional[str] = None, short_side: Optional[int] = None,
                       binary: bool = False, resize_mask: bool = False) -> Dict[str, Any]:
    """Segment a video file or frame folder from its mask files (FRAME:FILE strings or (frame,
    file) pairs; frame 0 first); write the outputs listed in the module docstring and return a
    summary (frames, objects, fps and the output paths). The networks run at short side
    `short_side` (None: cfg.TEST.VIDEO_SHORT_SIDE; 0: the input size); outputs keep the input size."""
    out_dir = prepare_output_dir(out_dir or experiment_dir(cfg))
    source = open_frames(video)
    specs = [parse_mask_spec(spec) if isinstance(spec, str) else spec for spec in masks]
    given = read_given_masks(specs, size=source.size, resize=resize_mask,
                             max_objects=int(cfg.TEST.N_MAX_OBJECTS))
    _check_mask_frames(specs, given, source)
    if short_side is None:
        short_side = int(cfg.TEST.VIDEO_SHORT_SIDE)
    net_height, net_width = network_size(*source.size, short_side)
    segmenter = new_segmenter(resolve_weights(weights), cfg, short_side)
    register_later_objects(segmenter, _later_objects(given, dict(specs)))
    logger.info('%s: %s frames of %dx%d, %d object(s) (ids %s)', source.path, len(source),
                source.size[1], source.size[0], given.n_objects, ', '.join(map(str, given.labels)))
    summary = _write_user_outputs(segmenter, source, given, out_dir, binary)
    where = f'masks in {summary["masks"]}, overlay {summary["overlay"]}'
    if binary:
        where += f', binary masks in {summary["binary"]}'
    print(f'{summary["frames"]} frames, {summary["objects"]} object(s), networks at {net_width}x{net_height}, '
          f'{summary["fps"]:.1f} frames/s; {where}')
    return summary


def _check_mask_frames(specs: Sequence[Tuple[int, str]], given: GivenMasks, source: FrameSource) -> None:
    if 0 not in given.masks:
        raise MaskError(f'no mask for the first frame: the first --mask FILE gives the objects of '
                        f'frame 0 (FRAME:FILE adds objects appearing later); got frames '
                        f'{", ".join(str(frame) for frame, _ in specs)}')
    for frame, path in specs:
        if source.length_is_exact and frame >= len(source):
            raise MaskError(f'{path}: given for frame {frame}, but {source.path} has {len(source)} '
                            f'frames (0..{len(source) - 1})')


def _later_objects(given: GivenMasks, paths: Dict[int, str]) -> Dict[int, np.ndarray]:
    """Per later frame, the mask of the objects that first appear there."""
    later = {}
    for frame, mask in given.masks.items():
        if frame == 0:
            continue
        new = [k for k in range(1, given.n_objects + 1) if given.first_frames[k - 1] == frame]
        known = sorted(set(np.unique(mask).tolist()) - {0} - set(new))
        if known:
            logger.warning('%s: object(s) %s already appeared earlier; only new objects are taken from '
                           'a later mask', paths[frame], ', '.join(str(given.labels[k - 1]) for k in known))
        if new:
            later[frame] = np.where(np.isin(mask, new), mask, 0).astype(np.uint8)
    return later


def _write_user_outputs(segmenter: VideoSegmenter, source: FrameSource, given: GivenMasks, out_dir: str,
                        binary: bool) -> Dict[str, Any]:
    masks_dir = os.path.join(out_dir, 'masks')
    binary_dir = os.path.join(out_dir, 'binary')
    writer = VideoWriter(os.path.join(out_dir, 'overlay.mp4'), source.fps, source.size)
    n_frames, start = 0, time.perf_counter()
    try:
        with PrefetchReader(source) as frames:
            stream = segment_stream(segmenter, frames, given.masks[0])
            for t, (frame, ids) in enumerate(tqdm(stream, total=len(source), desc='Segmenting', unit='frame')):
                user_ids = to_user_ids(ids, given.labels)
                write_palette_mask(os.path.join(masks_dir, f'{t:05d}.png'), user_ids)
                writer.write(overlay(frame, user_ids))
                if binary:
                    for label in given.labels:
                        write_image(os.path.join(binary_dir, str(label), f'{t:05d}.png'),
                                    np.where(user_ids == label, 255, 0).astype(np.uint8))
                n_frames = t + 1
    except DataError as e:
        kept = (f'the masks of frames 0..{n_frames - 1} are kept in {masks_dir} and their overlay in '
                f'{writer.path}' if n_frames else 'no mask was written')
        raise DataError(f'{e}; {kept}') from e
    finally:
        if n_frames:
            writer.close()
        else:
            writer.discard()
    unreached = [frame for frame in given.masks if frame >= n_frames]
    if unreached:
        logger.warning('%s ended after %d frames: the masks given for frame(s) %s were not used',
                       source.path, n_frames, ', '.join(map(str, unreached)))
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {'frames': n_frames, 'objects': given.n_objects, 'fps': n_frames / elapsed, 'masks': masks_dir,
            'overlay': writer.path, 'binary': binary_dir if binary else None}
