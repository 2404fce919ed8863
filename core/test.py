"""Testing on a benchmark split: masks written as palette PNGs, scored with the DAVIS protocol.
Under torchrun (`torchrun --nproc_per_node N runner.py --test ...`) every process takes a share
of the videos on its own GPU and rank 0 merges the scores.

    <out>/<video>/<frame>.png                   predicted ids (those of the given masks)
    <out>/<video>_overlay/<frame>.png           with cfg.TEST.VISUALIZE
    <out>/global_results-<split>.csv, <out>/per-sequence_results-<split>.csv
"""
import logging
import os
import time
from collections import deque
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from tqdm import tqdm

from core.distributed import broadcast_object, gather_objects, setup_distributed
from core.results import VideoResults
from core.scoring import ScoreJob, merge_parts, read_span, score_files, video_parts
from core.sequences import (SplitStreams, benchmark_videos, first_video_objects, layout, output_frames,
                            resolve_split)
from core.streaming import SplitSpeed, experiment_dir, new_segmenter, prepare_output_dir
from datasets.video import Video
from utils.evaluate import format_table, scored_records, summarise, write_csvs
from utils.io import DataError
from utils.output_safety import check_empty_output, check_output_folder
from utils.scoring_pool import ScoringPool
from utils.weights import resolve_weights

logger = logging.getLogger(__name__)

# With scoring workers a video is scored in parts of consecutive frames, a quarter of a
# worker's share each, every part submitted as soon as its masks are written: after the last
# video only its last part is left to score.
_PARTS_PER_WORKER = 4


def test_net(cfg, weights: str, dataset: Optional[str] = None, split: Optional[str] = None,
             out_dir: Optional[str] = None, short_side: Optional[int] = None,
             speed: Optional[SplitSpeed] = None) -> Dict[str, float]:
    """Segment every video of a split, score those with ground truth and return the global
    numbers (utils.evaluate.GLOBAL_COLUMNS; empty when the split has no ground truth).
    speed: where the frame counts and times of the split go (logged at the end either way)."""
    dataset, split = resolve_split(cfg, dataset, split)
    shard = setup_distributed()
    all_videos = benchmark_videos(cfg, dataset, split)
    videos = all_videos[shard.rank::shard.world_size]
    problem = None
    if shard.is_main:                      # one process names the folder, before any writes there
        try:
            out_dir = check_output_folder(cfg, out_dir or experiment_dir(cfg))
            check_empty_output(out_dir)
        except DataError as e:
            problem = str(e)
    out_dir, problem = broadcast_object(shard, (out_dir, problem))
    if problem is not None:
        raise DataError(problem)
    out_dir = prepare_output_dir(out_dir)
    first_objects = first_video_objects(videos, cfg)   # the segmenter starts with the first video's shapes
    segmenter = new_segmenter(resolve_weights(weights), cfg, short_side, layout(first_objects))
    with_truth = sum(bool(video.ground_truth) for video in all_videos)
    if not with_truth:
        logger.info('%s %s has no public ground truth: writing the masks only', dataset, split)
    logger.info('Testing %d of the %d videos of %s %s, writing to %s', len(videos), len(all_videos),
                dataset, split, out_dir)
    speed = speed or SplitSpeed()
    speed.start = time.perf_counter()
    workers = int(cfg.TEST.EVAL_WORKERS) if with_truth else 1
    parts_per_video = []
    with ScoringPool(workers) as scorer, \
            SplitStreams(segmenter, videos, bool(cfg.TEST.READ_AHEAD), first_objects) as streams:
        bar = tqdm(streams, total=len(videos), desc=f'{dataset} {split}', unit='video', disable=not shard.is_main)
        for video, stream in bar:
            parts = ScoredAsWritten(scorer, video, out_dir, bool(cfg.TEST.EXCLUDE_VOID), workers)
            fps = _segment_and_write(video, stream, out_dir, bool(cfg.TEST.VISUALIZE), speed, parts.written)
            bar.set_postfix(video=video.name, fps=f'{fps:.1f}')
            if video.ground_truth:
                parts_per_video.append(parts.finish())
        scored = scorer.results()
        records = [record for n_parts in parts_per_video
                   for record in merge_parts([next(scored) for _ in range(n_parts)])]
    logger.info('Segmented and scored %s', speed.summary())
    order = {video.name: i for i, video in enumerate(all_videos)}
    records = sorted((r for part in gather_objects(shard, records) for r in part),
                     key=lambda r: (order[r.sequence], r.object_id))
    if not shard.is_main:
        return {}
    records = scored_records(records)
    if not records:
        logger.info('Masks written to %s', out_dir)
        return {}
    print(format_table(records))
    paths = write_csvs(out_dir, split, records)
    logger.info('Masks in %s; scores in %s and %s', out_dir, *paths)
    return summarise(records)


class ScoredAsWritten:
    """Submits the score parts of a video (`video_parts`, in frame order) to a pool of `workers`,
    each once every mask file it reads is written; none for a video without ground truth. An
    inline pool (workers <= 1) scores the whole video at once after its last frame, so that
    scoring stays out of the video's time."""

    def __init__(self, scorer: ScoringPool, video: Video, out_dir: str, exclude_void: bool, workers: int):
        self.scorer = scorer
        self.as_written = workers > 1
        frames = sorted(video.ground_truth)
        parts = _PARTS_PER_WORKER * workers if self.as_written else 1
        jobs = video_parts(_score_job(video, out_dir, exclude_void), parts) if frames else []
        self.pending = deque((frames[read_span(job)[1] - 1], job) for job in jobs)   # (last frame read, job)
        self.count = len(jobs)

    def written(self, t: int) -> None:
        """Frames 0 .. t are written: submit the parts that read no later frame."""
        while self.as_written and self.pending and self.pending[0][0] <= t:
            self.scorer.submit(score_files, self.pending.popleft()[1])

    def finish(self) -> int:
        """After the video's stream: submit what is left (a part whose files are missing then
        reports them); the number of parts."""
        while self.pending:
            self.scorer.submit(score_files, self.pending.popleft()[1])
        return self.count


def _segment_and_write(video: Video, stream: Iterator[Tuple[np.ndarray, np.ndarray]], out_dir: str,
                       visualize: bool, speed: SplitSpeed, written: Callable[[int], None]) -> float:
    """Write the masks of the listed frames and of every ground-truth frame from the video's
    (frame, ids) stream, calling written(t) after frame t; return frames/s."""
    start = time.perf_counter()
    overlay_dir = os.path.join(out_dir, f'{video.name}_overlay') if visualize else None
    with VideoResults(os.path.join(out_dir, video.name), video.output_names,
                      set(output_frames(video)) | set(video.ground_truth), overlay_dir) as results:
        for t, (frame, ids) in enumerate(speed.timed(stream)):
            results.write(t, frame, ids)
            written(t)
    return results.n_frames / max(time.perf_counter() - start, 1e-9)


def _score_job(video: Video, out_dir: str, exclude_void: bool) -> ScoreJob:
    frames = sorted(video.ground_truth)
    return ScoreJob(video.name, [video.ground_truth[t] for t in frames],
                    [os.path.join(out_dir, video.name, f'{video.output_names[t]}.png') for t in frames],
                    video.binary, exclude_void)
