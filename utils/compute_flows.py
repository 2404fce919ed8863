"""Teacher optical flows for training, with torchvision's RAFT.

    python -m utils.compute_flows --dataset DAVIS --split train --out DIR [--model raft_large]

writes DIR/<video>/<frame name>.flo (Middlebury) for every frame: the backward flow of frame t,
RAFT(frame t, frame t-1), so pixel p of frame t came from p + flow(p) in frame t-1 (SPEC 2.3);
frame 0 gets a zero flow. Existing files are kept, so an interrupted run resumes.
"""
import argparse
import logging
import os
import sys
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import (Raft_Large_Weights, Raft_Small_Weights, raft_large,
                                             raft_small)
from tqdm import tqdm

from datasets.video import Video
from utils.cli import run_command
from utils.io import read_frame, write_flo
from utils.torchvision_weights import fetch_weights

logger = logging.getLogger(__name__)

RAFT_MODELS = {'raft_large': (raft_large, Raft_Large_Weights.DEFAULT),
               'raft_small': (raft_small, Raft_Small_Weights.DEFAULT)}
RAFT_STRIDE = 8
RAFT_MIN_SIZE = 128   # RAFT's correlation pyramid needs feature maps of at least 16 x 16


def load_raft(model_name: str, device: torch.device) -> torch.nn.Module:
    """Pretrained RAFT in eval mode; its weights are downloaded into the torch hub cache once."""
    if model_name not in RAFT_MODELS:
        raise ValueError(f'unknown flow model {model_name!r}; '
                         f'expected one of {sorted(RAFT_MODELS)}')
    builder, weights = RAFT_MODELS[model_name]
    fetch_weights(weights)
    return builder(weights=weights, progress=False).eval().to(device)


def _to_raft_input(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) in [-1, 1], as RAFT's weights expect."""
    image = torch.from_numpy(np.ascontiguousarray(frame)).to(device).permute(2, 0, 1)[None]
    return image.float() / 127.5 - 1.0


@torch.no_grad()
def backward_flow(model: torch.nn.Module, frame: np.ndarray, previous: np.ndarray,
                  device: torch.device, num_flow_updates: int = 12) -> np.ndarray:
    """(H, W, 2) float32 flow of `frame` to `previous` (both (H, W, 3) uint8 RGB)."""
    height, width = frame.shape[:2]
    padded_h = max(RAFT_MIN_SIZE, -(-height // RAFT_STRIDE) * RAFT_STRIDE)
    padded_w = max(RAFT_MIN_SIZE, -(-width // RAFT_STRIDE) * RAFT_STRIDE)
    pad = (0, padded_w - width, 0, padded_h - height)
    images = [F.pad(_to_raft_input(f, device), pad, mode='replicate') for f in (frame, previous)]
    flow = model(*images, num_flow_updates=num_flow_updates)[-1]
    return flow[0, :, :height, :width].permute(1, 2, 0).float().cpu().numpy()


def write_video_flows(model: torch.nn.Module, video: Video, out_dir: str, device: torch.device,
                      num_flow_updates: int = 12, progress: Optional[tqdm] = None) -> int:
    """Write the flows of one video to out_dir/<video>/<frame name>.flo; returns how many
    files were written (existing ones are skipped)."""
    written = 0
    for t, name in enumerate(video.output_names):
        path = os.path.join(out_dir, video.name, f'{name}.flo')
        if not os.path.isfile(path):
            frame = read_frame(video.frame_paths[t])
            if t == 0:
                flow = np.zeros(frame.shape[:2] + (2,), dtype=np.float32)
            else:
                previous = read_frame(video.frame_paths[t - 1])
                flow = backward_flow(model, frame, previous, device, num_flow_updates)
            write_flo(path, flow)
            written += 1
        if progress is not None:
            progress.update(1)
    return written


def compute_flows(videos: Sequence[Video], out_dir: str, model: torch.nn.Module,
                  device: torch.device, num_flow_updates: int = 12) -> Dict[str, int]:
    """Flows of every video, with a progress bar; returns files written per video."""
    written = {}
    with tqdm(total=sum(len(v) for v in videos), unit='frame', desc='flows') as progress:
        for video in videos:
            written[video.name] = write_video_flows(model, video, out_dir, device,
                                                    num_flow_updates, progress)
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dataset', required=True,
                        help='a dataset name of cfg.DATASETS (e.g. DAVIS)')
    parser.add_argument('--split', default='train')
    parser.add_argument('--out', required=True, help='output folder: OUT/<video>/<frame>.flo')
    parser.add_argument('--model', default='raft_large', choices=sorted(RAFT_MODELS))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--updates', type=int, default=12, help='RAFT refinement iterations')
    parser.add_argument('--cfg', help='a config file with the dataset roots (default: config.py)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
    args = parse_args(argv)
    from config import cfg
    from datasets.registry import list_videos
    if args.cfg:
        from utils.configuration import load_config_file, merge_config
        merge_config(cfg, load_config_file(args.cfg))
    device = torch.device(args.device)
    model = load_raft(args.model, device)
    videos = list_videos(cfg, args.dataset, args.split)
    written = compute_flows(videos, args.out, model, device, args.updates)
    logger.info('Wrote %d flow files for %d videos to %s', sum(written.values()), len(videos),
                args.out)


if __name__ == '__main__':
    sys.exit(run_command(main))
