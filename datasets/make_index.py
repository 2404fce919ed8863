"""Write a JSON index (videos, frame counts, object counts) of a benchmark read from its official
layout, for inspection; nothing else reads it.

    python -m datasets.make_index --dataset DAVIS --out datasets/DAVIS.json
                                  [--split val] [--root DIR]
"""
import argparse
import copy
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

import config
from datasets.registry import SPLITS, list_videos
from datasets.video import Video
from utils.cli import run_command
from utils.io import DataError, read_mask, write_json


def count_objects(video: Video, ignore_idx: int) -> int:
    """Objects in the video's input masks (binary datasets: 1 when any label is non-zero)."""
    labels = set()
    for path in video.given_masks.values():
        labels.update(np.unique(read_mask(path)).tolist())
    labels.discard(0)
    if video.binary:
        return min(len(labels), 1)
    labels.discard(ignore_idx)
    return len(labels)


def build_index(cfg, dataset_name: str, splits: Optional[Sequence[str]] = None) -> Dict:
    """{'dataset', 'splits': {split: [{'name', 'n_frames', 'n_objects'}]}}; without `splits`,
    every split of the dataset, skipping (with a note on stderr) those that cannot be listed."""
    index = {'dataset': dataset_name, 'splits': {}}
    ignore_idx = cfg.CONST.IGNORE_IDX
    for split in splits or SPLITS[dataset_name]:
        try:
            videos = list_videos(cfg, dataset_name, split)
        except DataError as e:
            if splits:
                raise
            print(f'skipping {dataset_name} {split}: {e}', file=sys.stderr)
            continue
        index['splits'][split] = [
            {'name': v.name, 'n_frames': len(v), 'n_objects': count_objects(v, ignore_idx)}
            for v in videos]
    if not index['splits']:
        raise DataError(f'no split of {dataset_name} could be listed')
    return index


def main(argv: Optional[List[str]] = None) -> None:
    """Command line entry point (exit statuses as utils/cli.py)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dataset', required=True, choices=sorted(SPLITS))
    parser.add_argument('--split', action='append', help='repeatable; default: every split found')
    parser.add_argument('--root', help='instead of cfg.DATASETS.<dataset>.ROOT')
    parser.add_argument('--out', required=True, help='the JSON file to write')
    args = parser.parse_args(argv)
    cfg = copy.deepcopy(config.cfg)
    if args.root:
        cfg.DATASETS[args.dataset].ROOT = args.root
    index = build_index(cfg, args.dataset, args.split)
    write_json(args.out, index, indent=2)
    for split, videos in index['splits'].items():
        print(f'{args.out}: {args.dataset} {split}: {len(videos)} videos, '
              f'{sum(v["n_frames"] for v in videos)} frames')


if __name__ == '__main__':
    sys.exit(run_command(main))
