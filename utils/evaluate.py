"""Scoring DAVIS results with the official semi-supervised protocol (davis2017-evaluation).

    python -m utils.evaluate --results DIR --davis ROOT --split val [--year 2016|2017] [--workers N]

reads DIR/<sequence>/<frame>.png (palette masks), prints a per-object table and the global row,
and writes DIR/global_results-<split>.csv and DIR/per-sequence_results-<split>.csv. Sequences of
2 frames or fewer have no scored frame (the protocol leaves out the first and the last): they are
left out of the table, the CSV files and the means, with a warning naming them.
"""
import argparse
import csv
import glob
import io
import logging
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from utils.cli import run_command
from utils.io import DataError, atomic_write, read_mask
from utils.output_safety import check_names
from utils.metrics import Statistics, sequence_scores, statistics
from utils.scoring_pool import ScoringPool

logger = logging.getLogger(__name__)

GLOBAL_COLUMNS = ('J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay')
SEQUENCE_COLUMNS = ('Sequence', 'J-Mean', 'F-Mean')


@dataclass(frozen=True, eq=False)
class ObjectRecord:
    """Per-frame J and F (frames 1 .. T-2) of one object of one sequence."""
    sequence: str
    object_id: int
    j_frames: np.ndarray
    f_frames: np.ndarray

    @property
    def name(self) -> str:
        """The toolkit's row name, <sequence>_<object id>."""
        return f'{self.sequence}_{self.object_id}'

    @property
    def j(self) -> Statistics:
        return statistics(self.j_frames)

    @property
    def f(self) -> Statistics:
        return statistics(self.f_frames)


def evaluate_sequence(name: str, gt_ids: np.ndarray, pred_ids: np.ndarray, binary: bool = False,
                      exclude_void: bool = False) -> List[ObjectRecord]:
    """Score one sequence held in memory ((T, H, W) ids); see utils.metrics.sequence_scores."""
    j, f = sequence_scores(name, gt_ids, pred_ids, binary=binary, exclude_void=exclude_void)
    return [ObjectRecord(name, k + 1, j[k], f[k]) for k in range(len(j))]


def summarise(records: Sequence[ObjectRecord]) -> Dict[str, float]:
    """Global numbers: every statistic averaged over all objects of all sequences."""
    if not records:
        raise DataError('no objects to summarise: the ground truth of every sequence is empty or '
                        'too short to score')
    j = [r.j for r in records]
    f = [r.f for r in records]
    j_mean, f_mean = float(np.mean([s.mean for s in j])), float(np.mean([s.mean for s in f]))
    values = ((j_mean + f_mean) / 2, j_mean, np.mean([s.recall for s in j]), np.mean([s.decay for s in j]),
              f_mean, np.mean([s.recall for s in f]), np.mean([s.decay for s in f]))
    return {column: float(value) for column, value in zip(GLOBAL_COLUMNS, values)}


def scored_records(records: Sequence[ObjectRecord]) -> List[ObjectRecord]:
    """The records with at least one scored frame; the sequences left out (2 frames or fewer)
    are named in a warning."""
    kept = [r for r in records if r.j_frames.size]
    dropped = list(dict.fromkeys(r.sequence for r in records if not r.j_frames.size))
    if dropped:
        logger.warning('left out of the scores: %s (2 frames or fewer; the first and the last frame '
                       'are never scored)', ', '.join(dropped))
    return kept


def _number(value: float) -> str:
    """Three decimals as the toolkit's CSV files (nan as an empty field)."""
    return '' if np.isnan(value) else '%.3f' % value


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator='\n').writerows(rows)
    return buffer.getvalue()


def _write_text(path: str, text: str) -> None:
    def write(temporary: str) -> None:
        with open(temporary, 'w', newline='') as f:
            f.write(text)

    atomic_write(path, write)


def write_csvs(out_dir: str, split: str, records: Sequence[ObjectRecord]) -> Tuple[str, str]:
    """Write global_results-<split>.csv and per-sequence_results-<split>.csv; return their paths."""
    summary = summarise(records)
    global_path = os.path.join(out_dir, f'global_results-{split}.csv')
    sequence_path = os.path.join(out_dir, f'per-sequence_results-{split}.csv')
    _write_text(global_path, _csv_text([GLOBAL_COLUMNS, [_number(summary[c]) for c in GLOBAL_COLUMNS]]))
    rows = [[r.name, _number(r.j.mean), _number(r.f.mean)] for r in records]
    _write_text(sequence_path, _csv_text([SEQUENCE_COLUMNS, *rows]))
    return global_path, sequence_path


def format_table(records: Sequence[ObjectRecord]) -> str:
    """Per-object J-Mean and F-Mean, then the global row, as printable text."""
    width = max([len('Sequence')] + [len(r.name) for r in records])
    lines = [f'{"Sequence":<{width}}  {"J&F-Mean":>8}  {"J-Mean":>8}  {"F-Mean":>8}']
    for r in records:
        jf = (r.j.mean + r.f.mean) / 2
        lines.append(f'{r.name:<{width}}  {jf:8.3f}  {r.j.mean:8.3f}  {r.f.mean:8.3f}')
    summary = summarise(records)
    lines += ['', '  '.join(f'{c:>8}' for c in GLOBAL_COLUMNS),
              '  '.join(f'{summary[c]:8.3f}' for c in GLOBAL_COLUMNS)]
    return '\n'.join(lines)


def _read_list(path: str) -> List[str]:
    """Sequence names of a split list: one name a line, or DAVIS 2016 lines of frame paths."""
    names: List[str] = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            name = os.path.basename(os.path.dirname(fields[0])) if '/' in fields[0] else fields[0]
            if name not in names:
                names.append(name)
    return names


def split_sequences(davis_root: str, split: str, year: int = 2017, resolution: str = '480p') -> List[str]:
    """Sequences of a split: ImageSets/<year>/<split>.txt; for 2016 also the DAVIS 2016 list
    ImageSets/<resolution>/<split>.txt."""
    candidates = [os.path.join(davis_root, 'ImageSets', str(year), f'{split}.txt')]
    if year == 2016:
        candidates.append(os.path.join(davis_root, 'ImageSets', resolution, f'{split}.txt'))
    for path in candidates:
        if os.path.isfile(path):
            names = _read_list(path)
            if not names:
                raise DataError(f'{path}: the split list is empty')
            return check_names(names, path)
    raise DataError(f'split list not found: {" or ".join(candidates)}')


def _ground_truth_paths(davis_root: str, name: str, resolution: str) -> List[str]:
    """The annotation files of a sequence, checked to cover every frame."""
    folder = os.path.join(davis_root, 'Annotations', resolution, name)
    paths = sorted(glob.glob(os.path.join(folder, '*.png')))
    if not paths:
        raise DataError(f'{folder}: no ground-truth masks (*.png) found')
    frames = glob.glob(os.path.join(davis_root, 'JPEGImages', resolution, name, '*.jpg'))
    if len(frames) > len(paths):
        raise DataError(f'{folder}: {len(paths)} ground-truth masks for {len(frames)} frames '
                        f'(this split has no public ground truth for every frame)')
    return paths


def read_sequence(davis_root: str, results_dir: str, name: str,
                  resolution: str = '480p') -> Tuple[np.ndarray, np.ndarray]:
    """(T, H, W) ground-truth and predicted ids of a sequence; prediction frames 0 and T-1 are
    not read (the protocol does not score them) and are left empty."""
    gt_paths = _ground_truth_paths(davis_root, name, resolution)
    first = read_mask(gt_paths[0])
    gt = np.zeros((len(gt_paths), *first.shape), dtype=np.uint8)
    pred = np.zeros_like(gt)
    for t, path in enumerate(gt_paths):
        gt[t] = _read_sized(path, first.shape, 'ground-truth mask')
    for t in range(1, len(gt_paths) - 1):
        stem = os.path.splitext(os.path.basename(gt_paths[t]))[0]
        pred[t] = _read_sized(os.path.join(results_dir, name, f'{stem}.png'), first.shape, 'predicted mask')
    return gt, pred


def _read_sized(path: str, shape: Tuple[int, ...], what: str) -> np.ndarray:
    mask = read_mask(path)
    if mask.shape != shape:
        raise DataError(f'{path}: {what} is {mask.shape[1]}x{mask.shape[0]}, '
                        f'the ground truth is {shape[1]}x{shape[0]}')
    return mask


def _score_files(job: Tuple[str, str, str, str, bool]) -> List[ObjectRecord]:
    """Worker: read and score one sequence (name, davis_root, results_dir, resolution, binary)."""
    name, davis_root, results_dir, resolution, binary = job
    gt, pred = read_sequence(davis_root, results_dir, name, resolution)
    return evaluate_sequence(name, gt, pred, binary=binary)


def _score_all(jobs: List[Tuple[str, str, str, str, bool]], workers: int) -> Dict[str, List[ObjectRecord]]:
    """Score every job, in worker processes when workers > 1."""
    with ScoringPool(min(workers, len(jobs))) as pool:
        for job in jobs:
            pool.submit(_score_files, job)
        scored = tqdm(pool.results(), total=len(jobs), desc='Evaluating', unit='video')
        return {job[0]: records for job, records in zip(jobs, scored)}


def evaluate_folder(results_dir: str, davis_root: str, split: str, year: int = 2017, workers: int = 2,
                    resolution: str = '480p') -> Dict[str, float]:
    """Score DIR/<sequence>/<frame>.png against a DAVIS split, print the table, write both CSV
    files into results_dir and return the global numbers (keys GLOBAL_COLUMNS).

    year=2016 scores every sequence as one object (DAVIS 2016)."""
    if year not in (2016, 2017):
        raise ValueError(f'year must be 2016 or 2017, got {year}')
    if not os.path.isdir(results_dir):
        raise DataError(f'{results_dir}: results folder not found')
    if not os.access(results_dir, os.W_OK):
        raise DataError(f'{results_dir}: the results folder is not writable, the CSV files could not '
                        f'be written there')
    names = split_sequences(davis_root, split, year, resolution)
    logger.info('Evaluating %d sequences of DAVIS %d %s in %s', len(names), year, split, results_dir)
    jobs = [(name, davis_root, results_dir, resolution, year == 2016) for name in names]
    scored = _score_all(jobs, workers)
    records = scored_records([record for name in names for record in scored[name]])
    print(format_table(records))
    paths = write_csvs(results_dir, split, records)
    logger.info('Results written to %s and %s', *paths)
    return summarise(records)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The command line; exit statuses as utils/cli.py."""
    parser = argparse.ArgumentParser(
        description='Score DAVIS results with the official semi-supervised protocol.')
    parser.add_argument('--results', required=True, help='folder of <sequence>/<frame>.png palette masks')
    parser.add_argument('--davis', required=True, help='DAVIS root (JPEGImages, Annotations, ImageSets)')
    parser.add_argument('--split', default='val', help='split list name, e.g. train or val')
    parser.add_argument('--year', type=int, default=2017, choices=(2016, 2017))
    parser.add_argument('--workers', type=int, default=2, help='worker processes (1: none)')
    parser.add_argument('--resolution', default='480p')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    evaluate_folder(args.results, args.davis, args.split, args.year, args.workers, args.resolution)


if __name__ == '__main__':
    sys.exit(run_command(main))
