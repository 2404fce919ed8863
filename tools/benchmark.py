"""Speed and memory of the inference paths on synthetic 480p clips (TinyFlowNet included).

    python tools/benchmark.py --frames 30 67 100 300 --objects 1 2 4 8 --out benchmark.json

For every clip length and object count it runs the published dense fp32 path and the fast
regional fp32 and bf16 paths one after another on the same GPU and reports frames per
second (whole loop: upload, flow, memory, decode, mask download) and peak GPU memory.
`region` is the mean share of a kept frame inside its object's box at the end of the clip:
the memory read's cost grows with it. Random weights (seeded by --seed) segment badly, so
their boxes are far larger than a trained network's (often the whole frame).
--scales and --flip measure test-time augmentation (e.g. --scales 0.75 1.0 1.25 --flip).
--split-videos N times `--test` end to end instead, on a synthetic DAVIS split of N videos
(--split-frames, --split-size, object counts --split-objects in turn, --kept-captures,
--eval-workers, --no-read-ahead): frames/s inside the videos and over the split, the first
video's time, the other videos' starts (to their first mask), the time after the last video
(scoring) and model loading.
"""
import argparse
import copy
import gc
import logging
import math
import os
import sys
import time
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# PyTorch and the networks are imported where they are used: the scoring workers that the
# split mode spawns import this script first, and they need neither.
from config import cfg as default_cfg  # noqa: E402
from utils.cli import UserError, run_command  # noqa: E402
from utils.io import check_new_result, write_json  # noqa: E402

PATHS = {'dense-fp32': (False, 'fp32'), 'fast-fp32': (True, 'fp32'), 'fast-bf16': (True, 'bf16')}


class SyntheticClip:
    """A textured background panning to and fro and elliptical objects circling across it, of
    any length: the motion repeats every `period` frames, which are drawn up front (a
    10000-frame clip costs the host `period` frames, and no frame is drawn while the loop is
    timed). `first_mask` holds the ids of frame 0."""

    def __init__(self, n_frames: int, n_objects: int, height: int, width: int, seed: int = 0,
                 period: int = 240):
        import cv2
        self.n_frames, self.period = n_frames, min(period, n_frames)
        rng = np.random.default_rng(seed)
        coarse = rng.random((height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
        self.background = cv2.resize(coarse, (width + 64, height + 64), interpolation=cv2.INTER_CUBIC)
        self.colours = rng.integers(0, 255, (n_objects, 3))
        self.centres = rng.random((n_objects, 2)) * [width * 0.4, height * 0.4] + [width * 0.3, height * 0.3]
        self.radii = rng.random((n_objects, 2)) * [width * 0.15, height * 0.15] + [width * 0.05, height * 0.05]
        self.axes = rng.random((n_objects, 2)) * [width * 0.08, height * 0.08] + [width * 0.04, height * 0.06]
        self.size = (height, width)
        self.cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        for t in range(self.period):
            self.frame_and_ids(t)
        self.first_mask = self.frame_and_ids(0)[1]

    def __len__(self) -> int:
        return self.n_frames

    def frame_and_ids(self, t: int) -> Tuple[np.ndarray, np.ndarray]:
        t %= self.period
        if t not in self.cache:
            height, width = self.size
            phase = 2 * math.pi * t / self.period
            shift = int(32 + 20 * math.sin(phase))
            frame = (np.clip(self.background[shift:shift + height, shift:shift + width], 0, 1) * 255).astype(np.uint8)
            ids = np.zeros((height, width), dtype=np.uint8)
            yy, xx = np.mgrid[:height, :width]
            for k in range(len(self.colours)):
                cx, cy = self.centres[k] + self.radii[k] * [math.cos(phase + k), math.sin(phase + k)]
                inside = ((xx - cx) / self.axes[k, 0]) ** 2 + ((yy - cy) / self.axes[k, 1]) ** 2 <= 1
                frame[inside] = self.colours[k]
                ids[inside] = k + 1
            self.cache[t] = (frame, ids)
        return self.cache[t]

    def __getitem__(self, t: int) -> np.ndarray:
        if not 0 <= t < self.n_frames:
            raise IndexError(t)
        return self.frame_and_ids(t)[0]

    def head(self, n_frames: int) -> 'SyntheticClip':
        clip = copy.copy(self)
        clip.n_frames = min(n_frames, self.n_frames)
        return clip


def synthetic_clip(n_frames: int, n_objects: int, height: int, width: int, seed: int = 0):
    """(frames, first mask) of a SyntheticClip."""
    clip = SyntheticClip(n_frames, n_objects, height, width, seed)
    return clip, clip.first_mask


def path_cfg(path: str, scales: List[float], flip: bool, max_memory_frames: int,
             kept_captures: int = default_cfg.TEST.KEPT_CAPTURES):
    """The config of one measured path."""
    regional, precision = PATHS[path]
    cfg = copy.deepcopy(default_cfg)
    cfg.TEST.REGIONAL_READ = regional
    cfg.TEST.PRECISION = precision
    cfg.TEST.FRAME_SCALES = list(scales)
    cfg.TEST.FLIP_LR = flip
    cfg.TEST.MAX_MEMORY_FRAMES = max_memory_frames
    cfg.TEST.KEPT_CAPTURES = kept_captures
    return cfg


def run_once(tflownet, rmnet, frames, first_mask, cfg) -> Dict[str, float]:
    import torch
    from core.segmenter import VideoSegmenter
    from models.packed_memory import PackedMemoryBank
    segmenter = VideoSegmenter(None, 'cuda', cfg=cfg, tflownet=tflownet, rmnet=rmnet)
    for _ in segmenter.segment(frames.head(6), first_mask):   # warm-up: kernels, autotuning, graphs
        pass
    torch.cuda.synchronize()
    gc.collect()                                          # graphs of earlier runs still referenced
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    n_masks = sum(1 for _ in segmenter.segment(frames, first_mask))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert n_masks == len(frames)
    memory = segmenter.branches[0].recurrence.memory
    region = memory.region_fraction() if isinstance(memory, PackedMemoryBank) else None   # dense: no boxes kept
    return {'fps': len(frames) / elapsed, 'region_fraction': region,
            'peak_gib': torch.cuda.max_memory_allocated() / 2 ** 30,
            'peak_above_weights_gib': (torch.cuda.max_memory_allocated() - base) / 2 ** 30}


def write_split(root: str, n_videos: int, n_frames: int, height: int, width: int,
                object_counts: Sequence[int]) -> None:
    """A DAVIS 2017 layout of synthetic videos (JPEG frames, palette ground truth) under root;
    video i has object_counts[i % len(object_counts)] objects, as a real split mixes them."""
    from utils.io import write_image, write_palette_mask
    names = [f'synthetic{i:03d}' for i in range(n_videos)]
    for i, name in enumerate(names):
        clip = SyntheticClip(n_frames, object_counts[i % len(object_counts)], height, width, seed=i)
        for t in range(n_frames):
            frame, ids = clip.frame_and_ids(t)
            write_image(os.path.join(root, 'JPEGImages', '480p', name, f'{t:05d}.jpg'), frame)
            write_palette_mask(os.path.join(root, 'Annotations', '480p', name, f'{t:05d}.png'), ids)
    os.makedirs(os.path.join(root, 'ImageSets', '2017'), exist_ok=True)
    with open(os.path.join(root, 'ImageSets', '2017', 'val.txt'), 'w') as f:
        f.write('\n'.join(names) + '\n')


def run_split(weights: str, root: str, out: str, cfg) -> Dict[str, float]:
    """--test end to end on the split under root; frames/s inside the videos and over the split."""
    from core.streaming import SplitSpeed
    from core.test import test_net
    cfg.DATASETS.DAVIS.ROOT = root
    speed = SplitSpeed()
    started = time.perf_counter()
    test_net(cfg, weights, dataset='DAVIS', split='val', out_dir=out, speed=speed)
    elapsed, after = speed.elapsed(), speed.after_last_video()
    later_starts = sorted(speed.start_seconds[1:]) or [0.0]
    return {'fps_inside_videos': speed.inside_frames / max(speed.inside_seconds, 1e-9),
            'later_video_starts_s': {'median': later_starts[len(later_starts) // 2], 'max': later_starts[-1],
                                     'total': sum(later_starts)},
            'fps_over_split': speed.frames / max(elapsed, 1e-9), 'split_frames_total': speed.frames,
            'first_video_s': speed.first_video_seconds, 'split_s': elapsed,
            'after_last_video_s': after, 'model_loading_s': speed.start - started}


def benchmark_split(args, tflownet, rmnet, results) -> None:
    from utils.checkpoint import published_checkpoint, save_checkpoint
    height, width = args.split_size
    with tempfile.TemporaryDirectory() as folder:
        write_split(os.path.join(folder, 'DAVIS'), args.split_videos, args.split_frames, height, width,
                    args.split_objects)
        weights = os.path.join(folder, 'weights.pth')
        save_checkpoint(weights, published_checkpoint(tflownet, rmnet))
        print(f'split of {args.split_videos} videos x {args.split_frames} frames at {width}x{height}, '
              f'objects {" ".join(map(str, args.split_objects))} in turn')
        for path in args.paths:
            cfg = path_cfg(path, args.scales, args.flip, args.max_memory_frames, args.kept_captures)
            cfg.TEST.EVAL_WORKERS = args.eval_workers
            cfg.TEST.READ_AHEAD = not args.no_read_ahead
            measured = run_split(weights, os.path.join(folder, 'DAVIS'), os.path.join(folder, f'out-{path}'), cfg)
            results['runs'].append({'split_videos': args.split_videos, 'frames': args.split_frames,
                                    'objects': list(args.split_objects), 'kept_captures': args.kept_captures,
                                    'eval_workers': args.eval_workers, 'read_ahead': not args.no_read_ahead,
                                    'size': [height, width], 'path': path, **measured})
            first, starts = measured['first_video_s'], measured['later_video_starts_s']
            print(f'{path:>12}: {measured["fps_inside_videos"]:.1f} fps inside the videos, '
                  f'{measured["fps_over_split"]:.1f} fps over the split ({measured["split_s"]:.1f} s'
                  + ('' if first is None else f', the first video {first:.1f} s of it')
                  + f', {measured["after_last_video_s"]:.1f} s after the last video; model loading '
                  f'{measured["model_loading_s"]:.1f} s before it); the other videos\' starts: median '
                  f'{1e3 * starts["median"]:.1f} ms, longest {1e3 * starts["max"]:.1f} ms, '
                  f'{starts["total"]:.2f} s in all', flush=True)


def main(argv: List[str] = None) -> None:
    """The command line (exit statuses as utils/cli.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--frames', type=int, nargs='+', default=[30, 67, 100, 300])
    parser.add_argument('--objects', type=int, nargs='+', default=[1, 2, 4, 8])
    parser.add_argument('--paths', nargs='+', default=list(PATHS), choices=list(PATHS))
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--width', type=int, default=854)
    parser.add_argument('--weights', default=None, help='checkpoint (default: random weights)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights')
    parser.add_argument('--dense-max-frames', type=int, default=100,
                        help='skip the dense path on longer clips (it is slow)')
    parser.add_argument('--scales', type=float, nargs='+', default=list(default_cfg.TEST.FRAME_SCALES),
                        help='TEST.FRAME_SCALES (test-time augmentation)')
    parser.add_argument('--flip', action='store_true', help='TEST.FLIP_LR (test-time augmentation)')
    parser.add_argument('--max-memory-frames', type=int, default=0,
                        help='TEST.MAX_MEMORY_FRAMES (0: unbounded memory, as published)')
    parser.add_argument('--split-videos', type=int, default=0,
                        help='instead of clips: time --test end to end on a split of this many videos')
    parser.add_argument('--split-frames', type=int, default=67, help='frames of each video of the split')
    parser.add_argument('--split-size', type=int, nargs=2, default=[240, 427], metavar=('H', 'W'))
    parser.add_argument('--split-objects', type=int, nargs='+', default=[1, 2, 3],
                        help='object counts of the split\'s videos, in turn')
    parser.add_argument('--eval-workers', type=int, default=default_cfg.TEST.EVAL_WORKERS,
                        help='TEST.EVAL_WORKERS of the split mode (processes scoring videos)')
    parser.add_argument('--kept-captures', type=int, default=default_cfg.TEST.KEPT_CAPTURES,
                        help='TEST.KEPT_CAPTURES of the split mode (1: a capture per change of objects or size)')
    parser.add_argument('--no-read-ahead', action='store_true',
                        help='TEST.READ_AHEAD False in the split mode: open each video only at its turn')
    parser.add_argument('--out', default='benchmark.json')
    args = parser.parse_args(argv)
    import torch
    from models.rmnet import RMNet
    from models.tiny_flownet import TinyFlowNet
    from utils.checkpoint import load_networks
    if not torch.cuda.is_available():
        raise UserError('the benchmark needs a CUDA GPU (none is visible to PyTorch)')
    check_new_result(args.out)
    if args.kept_captures < 1 or args.eval_workers < 1 or min(args.split_objects) < 1:
        raise UserError('--kept-captures, --eval-workers and --split-objects take numbers of at least 1')
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    torch.manual_seed(args.seed)     # random weights decide how large the regions are: fix them
    tflownet, rmnet = TinyFlowNet(default_cfg), RMNet(default_cfg)
    if args.weights:
        load_networks(args.weights, tflownet=tflownet, rmnet=rmnet)
    tflownet.cuda().eval()
    rmnet.cuda().eval()
    results = {'device': torch.cuda.get_device_name(), 'torch': torch.__version__,
               'size': [args.height, args.width], 'weights': args.weights or f'random (seed {args.seed})',
               'scales': args.scales, 'flip': args.flip, 'max_memory_frames': args.max_memory_frames,
               'runs': []}
    print(f"{results['device']}, torch {torch.__version__}, {args.width}x{args.height}, "
          f"TEST.MAX_MEMORY_FRAMES {args.max_memory_frames}")
    if args.split_videos:
        benchmark_split(args, tflownet, rmnet, results)
    else:
        benchmark_clips(args, tflownet, rmnet, results)
    write_json(args.out, results)


def benchmark_clips(args, tflownet, rmnet, results) -> None:
    print(f"{'frames':>6} {'objects':>7} " + ' '.join(f'{p + " fps":>15} {"GiB":>6}' for p in args.paths)
          + '  region')
    for n_frames in args.frames:
        for n_objects in args.objects:
            frames, first_mask = synthetic_clip(n_frames, n_objects, args.height, args.width)
            row, region = f'{n_frames:>6} {n_objects:>7} ', None
            for path in args.paths:
                if path.startswith('dense') and n_frames > args.dense_max_frames:
                    row += f'{"-":>15} {"-":>6} '
                    continue
                cfg = path_cfg(path, args.scales, args.flip, args.max_memory_frames)
                measured = run_once(tflownet, rmnet, frames, first_mask, cfg)
                results['runs'].append({'frames': n_frames, 'objects': n_objects, 'path': path, **measured})
                row += f'{measured["fps"]:>15.1f} {measured["peak_gib"]:>6.2f} '
                if measured['region_fraction'] is not None:
                    region = measured['region_fraction']
            print(row + ('       -' if region is None else f'  {region:6.0%}'), flush=True)


if __name__ == '__main__':
    sys.exit(run_command(main))
