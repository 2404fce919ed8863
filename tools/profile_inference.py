"""Where the time of one inference step goes: GPU time per stage, on synthetic 480p clips.

    python tools/profile_inference.py --frames 67 1000 2500 --objects 2 --precision bf16

For each clip length the fast path runs the clip with CUDA graphs (the frames per second
reported), and its last `--steps` frames run with the stages (flow, memorise, memory write,
query region, query encoder, memory read, decode, aggregation) wrapped in profiler ranges,
eagerly (no CUDA graph, so that each range holds its own kernels); the GPU time of each range
is reported in ms per frame. The profiler does not count Triton's launches in a range, so
`read kernels` gives the packed read's two Triton kernels apart (add them to `memory read`);
`all kernels` is every kernel of the step.
"""
import argparse
import contextlib
import copy
import functools
import importlib
import inspect
import os
import sys
import time
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import cfg as default_cfg  # noqa: E402
from tools.benchmark import synthetic_clip  # noqa: E402
from utils.cli import UserError, run_command  # noqa: E402
from utils.io import check_new_result, write_json  # noqa: E402

# (label, 'module:Class.method' or 'module:function')
STAGES: List[Tuple[str, str]] = [
    ('flow', 'models.tiny_flownet:TinyFlowNet.step'),
    ('memorise', 'models.rmnet:RMNet.memorize'),
    ('memory write', 'models.packed_memory:PackedMemoryBank.write_latest'),
    ('query region', 'models.rmnet:RMNet.query_region'),
    ('query encoder', 'models.rmnet:RMNet.encode_query'),
    ('memory read', 'models.packed_memory:PackedMemoryBank.read'),
    ('decode', 'models.rmnet:RMNet.decode'),
    ('aggregate', 'models.rmnet:RMNet.aggregate'),
]
READ_KERNELS = ('_partial_read_kernel', '_combine_kernel')     # models.packed_read_triton


def _resolve(target: str):
    module_name, _, attribute = target.partition(':')
    try:
        owner = importlib.import_module(module_name)
    except ImportError:
        return None
    *path, name = attribute.split('.')
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return (owner, name) if hasattr(owner, name) else None


def instrument() -> List[str]:
    """Wrap every stage found in a profiler range named after its label."""
    found = []
    for label, target in STAGES:
        resolved = _resolve(target)
        if resolved is None:
            continue
        owner, name = resolved
        original = getattr(owner, name)

        def wrapped(*args, __original=original, __label=label, **kwargs):
            with torch.profiler.record_function(f'stage::{__label}'):
                return __original(*args, **kwargs)

        wrapped = functools.wraps(original)(wrapped)
        if isinstance(inspect.getattr_static(owner, name), staticmethod):
            wrapped = staticmethod(wrapped)
        setattr(owner, name, wrapped)
        found.append(f'{label} <- {target}')
    return found


def _synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


@contextlib.contextmanager
def eager_graphs():
    """Make every GraphedStep run its step eagerly (each stage keeps its own kernels)."""
    from utils import cuda_graph
    saved = cuda_graph.GraphedStep.__call__
    cuda_graph.GraphedStep.__call__ = lambda self: self.step()
    try:
        yield
    finally:
        cuda_graph.GraphedStep.__call__ = saved


def profile_clip(tflownet, rmnet, n_frames: int, n_objects: int, precision: str, steps: int,
                 size: Tuple[int, int], device: str = 'cuda') -> Dict[str, float]:
    from core.segmenter import VideoSegmenter
    cfg = copy.deepcopy(default_cfg)
    cfg.TEST.PRECISION = precision
    frames, first_mask = synthetic_clip(n_frames, n_objects, *size)
    segmenter = VideoSegmenter(None, device, cfg=cfg, tflownet=tflownet, rmnet=rmnet)
    for _ in segmenter.segment(frames.head(6), first_mask):   # warm-up: cuDNN's plans for these shapes
        pass
    segmenter = VideoSegmenter(None, device, cfg=cfg, tflownet=tflownet, rmnet=rmnet)
    stream = segmenter.segment(frames, first_mask)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(n_frames - steps):
        next(stream)
    _synchronize(device)
    fps = (n_frames - steps) / (time.perf_counter() - start)
    totals: Dict[str, float] = {}
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with eager_graphs(), torch.profiler.profile(activities=activities) as prof:
        for _ in stream:
            pass
        _synchronize(device)
    all_kernels, read_kernels = 0.0, 0.0
    for event in prof.key_averages():
        if event.key.startswith('stage::'):
            if event.device_type != torch.autograd.DeviceType.CPU:
                continue   # the range's span on the GPU timeline (idle gaps included)
            label = event.key[len('stage::'):]
            totals[label] = totals.get(label, 0.0) + event.device_time_total / 1000 / steps
        elif event.device_type == torch.autograd.DeviceType.CUDA:
            all_kernels += event.self_device_time_total / 1000 / steps
            if event.key in READ_KERNELS:
                read_kernels += event.self_device_time_total / 1000 / steps
    totals['read kernels'] = read_kernels
    totals['all kernels'] = all_kernels
    return {'frames': n_frames, 'objects': n_objects, 'precision': precision, 'graphed_fps': fps,
            'graphed_ms_per_frame': 1000 / fps, 'stages_ms_per_frame': totals}


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--frames', type=int, nargs='+', default=[67, 1000, 2500])
    parser.add_argument('--objects', type=int, default=2)
    parser.add_argument('--precision', nargs='+', default=['bf16'], choices=['fp32', 'bf16'])
    parser.add_argument('--steps', type=int, default=20, help='profiled frames at the end of each clip')
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--width', type=int, default=854)
    parser.add_argument('--weights', default=None, help='checkpoint (default: random weights)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the random weights')
    parser.add_argument('--device', default='cuda', help='cpu: a quick check of this script')
    parser.add_argument('--out', default='profile.json')
    args = parser.parse_args(argv)
    check_new_result(args.out)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise UserError('the profile needs a CUDA GPU (or --device cpu for a check of the script)')
    from models.rmnet import RMNet
    from models.tiny_flownet import TinyFlowNet
    from utils.checkpoint import load_networks
    print('\n'.join(instrument()))
    torch.manual_seed(args.seed)     # random weights decide how large the regions are: fix them
    tflownet, rmnet = TinyFlowNet(default_cfg), RMNet(default_cfg)
    if args.weights:
        load_networks(args.weights, tflownet=tflownet, rmnet=rmnet)
    tflownet.to(args.device).eval()
    rmnet.to(args.device).eval()
    results = []
    for precision in args.precision:
        for n_frames in args.frames:
            result = profile_clip(tflownet, rmnet, n_frames, args.objects, precision, args.steps,
                                  (args.height, args.width), args.device)
            results.append(result)
            stages = ', '.join(f'{k} {v:.2f}' for k, v in result['stages_ms_per_frame'].items())
            print(f'{precision} T={n_frames}: {result["graphed_fps"]:.1f} fps graphed '
                  f'({result["graphed_ms_per_frame"]:.2f} ms/frame); GPU ms/frame at the end: {stages}',
                  flush=True)
    device_name = torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'
    write_json(args.out, {'device': device_name, 'torch': torch.__version__,
                          'weights': args.weights or f'random (seed {args.seed})', 'runs': results})


if __name__ == '__main__':
    sys.exit(run_command(main))
