"""Inference: benchmark result files, and the segmentation of a user's own video.

Python API (streaming: frames are consumed and masks produced one at a time):

    from core.inference import VideoSegmenter
    segmenter = VideoSegmenter('RMNet-DAVIS.pth', device='cuda')    # cfg: config.cfg unless given
    segmenter.add_object(30, mask_of_an_object_appearing_at_frame_30, object_id=3)   # optional
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
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

import config
from core.segmenter import VideoSegmenter as CoreSegmenter
from core.segmenter import network_size
from core.sequences import (SplitStreams, benchmark_videos, first_video_objects, layout, output_frames,
                            resolve_split)
from core.results import VideoResults, write_zip
from core.streaming import SplitSpeed, experiment_dir, new_segmenter, prepare_output_dir, segment_stream
from datasets.video import Video
from models.object_manager import NoNewObject, ObjectManager
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.cli import UserError
from utils.io import DataError, atomic_write
from utils.mask_input import GivenMasks, MaskError, parse_mask_spec, read_given_masks
from utils.output_safety import (check_empty_output, check_output_folder, check_user_video_output,
                                 earlier_user_video_outputs, removed_if_left_empty,
                                 replace_user_video_outputs, unfinished_run_folder)
from utils.video_io import FOLDER_FPS, FrameSource, PrefetchReader, VideoWriter, open_frames
from utils.weights import resolve_weights

__all__ = ['VideoSegmenter', 'inference_net', 'segment_user_video']

logger = logging.getLogger(__name__)

MaskSpec = Union[str, Tuple[int, str]]


class VideoSegmenter(CoreSegmenter):
    """core.segmenter.VideoSegmenter for the Python API: `cfg` defaults to config.cfg (the
    only place where library code falls back to the global configuration)."""

    def __init__(self, weights: Optional[str] = None, device: Union[str, torch.device, None] = None,
                 cfg=None, tflownet: Optional[TinyFlowNet] = None, rmnet: Optional[RMNet] = None,
                 short_side: Optional[int] = None):
        super().__init__(weights, device, config.cfg if cfg is None else cfg, tflownet, rmnet, short_side)


def inference_net(cfg, weights: str, dataset: Optional[str] = None, split: Optional[str] = None,
                  out_dir: Optional[str] = None, short_side: Optional[int] = None) -> str:
    """Write the benchmark result files of a split (see the module docstring); return the zip's path."""
    dataset, split = resolve_split(cfg, dataset, split)
    videos = benchmark_videos(cfg, dataset, split)
    out_dir = check_output_folder(cfg, out_dir or experiment_dir(cfg))
    check_empty_output(out_dir)
    out_dir = prepare_output_dir(out_dir)
    first_objects = first_video_objects(videos, cfg)   # the segmenter starts with the first video's shapes
    segmenter = new_segmenter(resolve_weights(weights), cfg, short_side, layout(first_objects))
    results_dir = 'Annotations' if dataset.startswith('YOUTUBE_VOS') else ''
    logger.info('Segmenting %d videos of %s %s into %s', len(videos), dataset, split, out_dir)
    members: List[str] = []
    speed = SplitSpeed()
    with SplitStreams(segmenter, videos, bool(cfg.TEST.READ_AHEAD), first_objects) as streams:
        bar = tqdm(streams, total=len(videos), desc=f'{dataset} {split}', unit='video')
        for video, stream in bar:
            start = time.perf_counter()
            members += _write_results(video, stream, out_dir, results_dir, bool(cfg.TEST.VISUALIZE), speed)
            bar.set_postfix(video=video.name, fps=f'{len(video) / max(time.perf_counter() - start, 1e-9):.1f}')
    logger.info('Segmented %s', speed.summary())
    zip_path = os.path.join(out_dir, f'{split}.zip')
    atomic_write(zip_path, lambda temporary: write_zip(temporary, out_dir, members))
    logger.info('Results in %s; submission archive %s (%d masks)', out_dir, zip_path, len(members))
    return zip_path


def _write_results(video: Video, stream: Iterator[Tuple[np.ndarray, np.ndarray]], out_dir: str,
                   results_dir: str, visualize: bool, speed: SplitSpeed) -> List[str]:
    """Write one video's masks from its (frame, ids) stream; return their paths relative to out_dir."""
    overlay_video = (VideoWriter(os.path.join(out_dir, 'overlay', f'{video.name}.mp4'), FOLDER_FPS)
                     if visualize else None)
    with VideoResults(os.path.join(out_dir, results_dir, video.name), video.output_names,
                      output_frames(video), overlay_video=overlay_video) as results:
        for t, (frame, ids) in enumerate(speed.timed(stream)):
            results.write(t, frame, ids)
    return [os.path.relpath(path, out_dir) for path in results.mask_paths]


def segment_user_video(cfg, video: str, masks: Sequence[MaskSpec], weights: str = 'davis',
                       out_dir: Optional[str] = None, short_side: Optional[int] = None,
                       binary: bool = False, resize_mask: bool = False,
                       overwrite: bool = False) -> Dict[str, Any]:
    """Segment a video file or frame folder from its mask files (FRAME:FILE strings or (frame,
    file) pairs; frame 0 first); write the outputs listed in the module docstring and return a
    summary (frames, objects, fps and the output paths). A non-empty `out_dir` is refused unless
    `overwrite`, which replaces only an earlier run's outputs there. The networks run at short
    side `short_side` (None: cfg.TEST.VIDEO_SHORT_SIDE; 0: the input size); outputs keep the
    input size."""
    claimed = not out_dir                    # a new folder for this run
    out_dir = check_output_folder(cfg, out_dir or experiment_dir(cfg))
    with removed_if_left_empty(out_dir, existed=False if claimed else None):
        return _segment_user_video(cfg, video, masks, weights, out_dir, short_side, binary, resize_mask,
                                   overwrite)


def _segment_user_video(cfg, video: str, masks: Sequence[MaskSpec], weights: str, out_dir: str,
                        short_side: Optional[int], binary: bool, resize_mask: bool,
                        overwrite: bool) -> Dict[str, Any]:
    """segment_user_video into the checked `out_dir`."""
    source = open_frames(video)
    specs = [parse_mask_spec(spec) if isinstance(spec, str) else spec for spec in masks]
    check_user_video_output(out_dir, overwrite, [source.path] + [path for _, path in specs])
    given = read_given_masks(specs, size=source.size, resize=resize_mask,
                             max_objects=int(cfg.TEST.N_MAX_OBJECTS))
    _check_mask_frames(specs, given, source)
    objects = _user_objects(cfg, given, dict(specs))
    if short_side is None:
        short_side = int(cfg.TEST.VIDEO_SHORT_SIDE)
    net_height, net_width = network_size(*source.size, short_side)
    prepare_output_dir(out_dir)
    segmenter = new_segmenter(resolve_weights(weights), cfg, short_side, (len(objects), source.size))
    logger.info('%s: %s frames of %dx%d, %d object(s) (ids %s)', source.path, len(source),
                source.size[1], source.size[0], given.n_objects, ', '.join(map(str, given.labels)))
    if overwrite and earlier_user_video_outputs(out_dir):
        summary = _replace_earlier_outputs(segmenter, source, given, objects, out_dir, binary)
    else:
        summary = _write_user_outputs(segmenter, source, given, objects, out_dir, binary)
    where = f'masks in {summary["masks"]}, overlay {summary["overlay"]}'
    if binary:
        where += f', binary masks in {summary["binary"]}'
    print(f'{summary["frames"]} frames, {summary["objects"]} object(s), networks at {net_width}x{net_height}, '
          f'{summary["fps"]:.1f} frames/s; {where}')
    return summary


def _replace_earlier_outputs(segmenter: CoreSegmenter, source: FrameSource, given: GivenMasks,
                             objects: ObjectManager, out_dir: str, binary: bool) -> Dict[str, Any]:
    """--overwrite over an earlier run: the new outputs are written into a folder of their own
    and replace the earlier ones only when the video is done, so a failed or interrupted run
    leaves the earlier outputs as they were (and what it wrote in its own folder)."""
    unfinished = unfinished_run_folder(out_dir)
    with removed_if_left_empty(unfinished, existed=False):
        try:
            summary = _write_user_outputs(segmenter, source, given, objects, unfinished, binary)
        except UserError as e:
            raise DataError(f'{e}; the earlier outputs in {out_dir} are unchanged') from e
        except BaseException:
            if os.path.isdir(unfinished) and os.listdir(unfinished):
                logger.warning('The earlier outputs in %s are unchanged; this run\'s are in %s',
                               out_dir, unfinished)
            raise
    try:
        replace_user_video_outputs(unfinished, out_dir)
    except OSError as e:
        raise DataError(f'{out_dir}: the new outputs could not replace the earlier ones '
                        f'({e.strerror or e}); the new outputs not yet in place are in {unfinished}, '
                        f'the earlier ones already moved aside in {os.path.join(unfinished, "replaced")}') from e

    def moved(path: Optional[str]) -> Optional[str]:
        return None if path is None else os.path.join(out_dir, os.path.relpath(path, unfinished))
    return {**summary, 'masks': moved(summary['masks']), 'overlay': moved(summary['overlay']),
            'binary': moved(summary['binary'])}


def _check_mask_frames(specs: Sequence[Tuple[int, str]], given: GivenMasks, source: FrameSource) -> None:
    if 0 not in given.masks:
        raise MaskError(f'no mask for the first frame: the first --mask FILE gives the objects of '
                        f'frame 0 (FRAME:FILE adds objects appearing later); got frames '
                        f'{", ".join(str(frame) for frame, _ in specs)}')
    for frame, path in specs:
        if source.length_is_exact and frame >= len(source):
            raise MaskError(f'{path}: given for frame {frame}, but {source.path} has {len(source)} '
                            f'frames (0..{len(source) - 1})')


def _user_objects(cfg, given: GivenMasks, paths: Dict[int, str]) -> ObjectManager:
    """The objects of the first mask and, per later mask, those that first appear there."""
    objects = ObjectManager.from_cfg(given.masks[0], cfg)
    for frame in sorted(given.masks):
        if frame == 0:
            continue
        mask = given.masks[frame]
        try:
            added = objects.add(frame, mask)
        except NoNewObject:
            added = []
        known = sorted(set(objects.ids_in(mask)) - set(added))
        if known:
            logger.warning('%s: object(s) %s already appeared earlier; only new objects are taken from '
                           'a later mask', paths[frame], ', '.join(map(str, known)))
    return objects


def _write_user_outputs(segmenter: CoreSegmenter, source: FrameSource, given: GivenMasks,
                        objects: ObjectManager, out_dir: str, binary: bool) -> Dict[str, Any]:
    masks_dir = os.path.join(out_dir, 'masks')
    binary_dir = os.path.join(out_dir, 'binary')
    writer = VideoWriter(os.path.join(out_dir, 'overlay.mp4'), source.fps, source.size)
    start = time.perf_counter()
    results = VideoResults(masks_dir, overlay_video=writer, binary_dir=binary_dir if binary else None,
                           object_ids=given.labels)
    try:
        with results, PrefetchReader(source) as frames:
            stream = segment_stream(segmenter, frames, objects)
            for t, (frame, ids) in enumerate(tqdm(stream, total=len(source), desc='Segmenting', unit='frame')):
                results.write(t, frame, ids)
    except DataError as e:
        overlay_kept = f' and their overlay in {writer.path}' if os.path.exists(writer.path) else ''
        kept = (f'the masks of frames 0..{results.n_frames - 1} are kept in {masks_dir}{overlay_kept}'
                if results.n_frames else 'no mask was written')
        raise DataError(f'{e}; {kept}') from e
    except BaseException:                      # Ctrl-C, SIGTERM: say what is kept, then stop
        if results.n_frames:
            logger.warning('Stopped: the masks of frames 0..%d are kept in %s, and their overlay in %s',
                           results.n_frames - 1, masks_dir, writer.path)
        raise
    n_frames = results.n_frames
    unreached = [frame for frame in given.masks if frame >= n_frames]
    if unreached:
        logger.warning('%s ended after %d frames: the masks given for frame(s) %s were not used',
                       source.path, n_frames, ', '.join(map(str, unreached)))
    elapsed = max(time.perf_counter() - start, 1e-9)
    return {'frames': n_frames, 'objects': given.n_objects, 'fps': n_frames / elapsed, 'masks': masks_dir,
            'overlay': writer.path, 'binary': binary_dir if binary else None}
