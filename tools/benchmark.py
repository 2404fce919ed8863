"""Speed and memory of the inference paths on synthetic 480p clips (TinyFlowNet included).

    python tools/benchmark.py --frames 30 67 100 300 --objects 1 2 4 8 --out benchmark.json

For every clip length and object count it runs the published dense fp32 path and the fast
regional fp32 and bf16 paths one after another on the same GPU and reports frames per
second (whole loop: upload, flow, memory, decode, mask download) and peak GPU memory.
--scales and --flip measure test-time augmentation (e.g. --scales 0.75 1.0 1.25 --flip).
"""
import argparse
import copy
import gc
import json
import logging
import math
import os
import sys
import time
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import cfg as default_cfg  # noqa: E402
from core.segmenter import VideoSegmenter  # noqa: E402
from models.rmnet import RMNet  # noqa: E402
from models.tiny_flownet import TinyFlowNet  # noqa: E402
from utils.checkpoint import load_networks  # noqa: E402
from utils.cli import UserError, run_command  # noqa: E402

PATHS = {'dense-fp32': (False, 'fp32'), 'fast-fp32': (True, 'fp32'), 'fast-bf16': (True, 'bf16')}


def synthetic_clip(n_frames: int, n_objects: int, height: int, width: int, seed: int = 0):
    """A textured background panning slowly and elliptical objects moving across it."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    import cv2
    background = cv2.resize(coarse, (width + 64, height + 64), interpolation=cv2.INTER_CUBIC)
    colours = rng.integers(0, 255, (n_objects, 3))
    starts = rng.random((n_objects, 2)) * [width * 0.6, height * 0.6] + [width * 0.2, height * 0.2]
    speeds = rng.normal(size=(n_objects, 2)) * 2
    axes = rng.random((n_objects, 2)) * [width * 0.08, height * 0.08] + [width * 0.04, height * 0.06]
    yy, xx = np.mgrid[:height, :width]
    frames, first_mask = [], None
    for t in range(n_frames):
        shift = int(32 + 20 * math.sin(t / 15))
        frame = (np.clip(background[shift:shift + height, shift:shift + width], 0, 1) * 255).astype(np.uint8)
        ids = np.zeros((height, width), dtype=np.uint8)
        for k in range(n_objects):
            cx, cy = starts[k] + speeds[k] * t
            cx, cy = cx % width, cy % height
            inside = ((xx - cx) / axes[k, 0]) ** 2 + ((yy - cy) / axes[k, 1]) ** 2 <= 1
            frame[inside] = colours[k]
            ids[inside] = k + 1
        frames.append(frame)
        if t == 0:
            first_mask = ids
    return frames, first_mask


def run_once(tflownet, rmnet, frames, first_mask, regional: bool, precision: str,
             scales: List[float], flip: bool) -> Dict[str, float]:
    cfg = copy.deepcopy(default_cfg)
    cfg.TEST.REGIONAL_READ = regional
    cfg.TEST.PRECISION = precision
    cfg.TEST.FRAME_SCALES = list(scales)
    cfg.TEST.FLIP_LR = flip
    segmenter = VideoSegmenter(None, 'cuda', cfg=cfg, tflownet=tflownet, rmnet=rmnet)
    for _ in segmenter.segment(frames[:6], first_mask):   # warm-up: kernels, autotuning, graphs
        pass
    torch.cuda.synchronize()
    gc.collect()                                          # graphs of earlier runs still referenced
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    masks = [mask for mask in segmenter.segment(frames, first_mask)]
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    assert len(masks) == len(frames)
    return {'fps': len(frames) / elapsed,
            'peak_gib': torch.cuda.max_memory_allocated() / 2 ** 30,
            'peak_above_weights_gib': (torch.cuda.max_memory_allocated() - base) / 2 ** 30}


def main(argv: List[str] = None) -> None:
    """The command line (exit statuses as utils/cli.py)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--frames', type=int, nargs='+', default=[30, 67, 100, 300])
    parser.add_argument('--objects', type=int, nargs='+', default=[1, 2, 4, 8])
    parser.add_argument('--paths', nargs='+', default=list(PATHS), choices=list(PATHS))
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--width', type=int, default=854)
    parser.add_argument('--weights', default=None, help='checkpoint (default: random weights)')
    parser.add_argument('--dense-max-frames', type=int, default=100,
                        help='skip the dense path on longer clips (it is slow)')
    parser.add_argument('--scales', type=float, nargs='+', default=list(default_cfg.TEST.FRAME_SCALES),
                        help='TEST.FRAME_SCALES (test-time augmentation)')
    parser.add_argument('--flip', action='store_true', help='TEST.FLIP_LR (test-time augmentation)')
    parser.add_argument('--out', default='benchmark.json')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError('the benchmark needs a CUDA GPU (none is visible to PyTorch)')
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    tflownet, rmnet = TinyFlowNet(default_cfg), RMNet(default_cfg)
    if args.weights:
        load_networks(args.weights, tflownet=tflownet, rmnet=rmnet)
    tflownet.cuda().eval()
    rmnet.cuda().eval()
    results = {'device': torch.cuda.get_device_name(), 'torch': torch.__version__,
               'size': [args.height, args.width], 'weights': args.weights or 'random',
               'scales': args.scales, 'flip': args.flip, 'runs': []}
    print(f"{results['device']}, torch {torch.__version__}, {args.width}x{args.height}")
    print(f"{'frames':>6} {'objects':>7} " + ' '.join(f'{p + " fps":>15} {"GiB":>6}' for p in args.paths))
    for n_frames in args.frames:
        for n_objects in args.objects:
            frames, first_mask = synthetic_clip(n_frames, n_objects, args.height, args.width)
            row = f'{n_frames:>6} {n_objects:>7} '
            for path in args.paths:
                if path.startswith('dense') and n_frames > args.dense_max_frames:
                    row += f'{"-":>15} {"-":>6} '
                    continue
                regional, precision = PATHS[path]
                measured = run_once(tflownet, rmnet, frames, first_mask, regional, precision,
                                    args.scales, args.flip)
                results['runs'].append({'frames': n_frames, 'objects': n_objects, 'path': path, **measured})
                row += f'{measured["fps"]:>15.1f} {measured["peak_gib"]:>6.2f} '
            print(row, flush=True)
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    sys.exit(run_command(main))
