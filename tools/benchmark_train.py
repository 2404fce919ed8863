"""Speed and memory of the RMNet training step on synthetic batches.

    python tools/benchmark_train.py                               fp32 and bf16, 4x465 and 8x232
    python tools/benchmark_train.py --profile --profile-ops 30    + where the time goes
    python tools/benchmark_train.py --quick                       tiny sizes (runs on the CPU)

The step is the one `python runner.py` trains with (core.train.TrainingStep): clips of
3 frames with 2 objects (--objects), TRAIN.N_MAX_OBJECTS 3, every frame memorised, frozen
BatchNorm, channels-last on a GPU (--contiguous: NCHW), Adam; on a GPU both replayed as CUDA
graphs (TRAIN.CUDA_GRAPHS, core.training_graphs) and launched kernel by kernel (--modes).
Batches wait in pinned host memory as the data loader leaves them. For each
precision, mode and batch x crop it reports the median step time over --steps steps after
--warmup steps as samples per second, and the peak GPU memory from the second step on (a
graph's capture included, cuDNN's trials of the first step not), allocated and reserved by
PyTorch's allocator (a graph's pool counts as reserved); JSON
(--out) and a printed table. --profile adds a per-stage breakdown of the eager step timed with CUDA events
(the query encoder of the clip's frames; each frame's memorise, query region, memory read,
decoder, aggregation; losses, backward, optimiser step), --profile-ops N the top N operators of torch.profiler by
device time, --sync-report the host synchronisations of one step (CUDA only).
"""
import argparse
import copy
import gc
import os
import statistics
import sys
import time
import warnings
from collections import Counter, defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import cfg as default_cfg  # noqa: E402
from core.train import (TrainingStep, build_networks, build_optimizer, freeze_batch_norm,  # noqa: E402
                        use_channels_last)
from core.training_graphs import graphs_apply, training_step  # noqa: E402
from utils.io import DataError, check_new_result, write_json  # noqa: E402

N_FRAMES, N_OBJECTS, MAX_OBJECTS = 3, 2, 3      # N_OBJECTS: the default of --objects
PRECISIONS = ('fp32', 'bf16')
MODES = ('graphed', 'eager')
FRAME_STAGES = ('memorize', 'query_region', 'decode', 'aggregate')
CLIP_STAGES = ('encode_query',)     # once per clip: the query side of every later frame
STEP_STAGES = ('forward', 'losses', 'backward', 'optimizer')


def parse_size(text: str) -> Tuple[int, int]:
    """'4x465' -> (batch 4, crop 465)."""
    try:
        batch, crop = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected BATCHxCROP such as 4x465, got {text!r}')
    if batch < 1 or crop < 16:
        raise argparse.ArgumentTypeError(f'{text}: the batch must be >= 1 and the crop >= 16')
    return batch, crop


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {text!r}')
    return int(text)


def synthetic_batch(batch: int, crop: int, device: torch.device, seed: int = 0,
                    n_objects: int = N_OBJECTS) -> Dict[str, Any]:
    """A loader-format batch: random byte frames with a brightness and a channel order each,
    n_objects moving ellipses one-hot in MAX_OBJECTS + 1 channels, their labels and a small
    flow; pinned when the device is CUDA."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:crop, :crop].astype(np.float32)
    frames = rng.integers(0, 256, size=(batch, N_FRAMES, 3, crop, crop), dtype=np.uint8)
    labels = np.zeros((batch, N_FRAMES, crop, crop), dtype=np.uint8)
    for b in range(batch):
        centres = rng.uniform(0.3, 0.7, (n_objects, 2)) * crop
        speeds = rng.normal(size=(n_objects, 2)) * crop / 50
        radii = rng.uniform(0.08, 0.2, (n_objects, 2)) * crop
        for t in range(N_FRAMES):
            for k in range(n_objects):
                cx, cy = centres[k] + speeds[k] * t
                inside = ((xx - cx) / radii[k, 0]) ** 2 + ((yy - cy) / radii[k, 1]) ** 2 <= 1
                labels[b, t][inside] = k + 1
    masks = np.eye(MAX_OBJECTS + 1, dtype=np.uint8)[labels].transpose(0, 1, 4, 2, 3)
    flows = np.full((batch, N_FRAMES, 2, crop, crop), 0.5, dtype=np.float32)
    flows[:, 0] = 0
    tensors = {'frames': frames, 'masks': masks, 'labels': labels, 'flows': flows}
    out: Dict[str, Any] = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in tensors.items()}
    out['n_objects'] = torch.full((batch,), n_objects, dtype=torch.long)
    out['brightness'] = torch.from_numpy(rng.uniform(0.9, 1.1, batch).astype(np.float32))
    out['channel_order'] = torch.from_numpy(np.stack([rng.permutation(3) for _ in range(batch)]))
    if device.type == 'cuda':
        out = {key: value.pin_memory() for key, value in out.items()}
    out['name'] = [f'synthetic/{b}' for b in range(batch)]
    return out


class StageTimer:
    """Time stamps at named points of a step: CUDA events on a GPU, the wall clock on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        self.marks: List[Tuple[str, Any]] = []
        self.enabled = False

    def mark(self, name: str) -> None:
        if not self.enabled:
            return
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def wrap(self, owner: torch.nn.Module, method: str) -> None:
        """Mark the start and end of every call of owner.<method> (an instance attribute that
        shadows the class's method)."""
        original = getattr(owner, method)

        def timed(*args, **kwargs):
            self.mark(f'{method}:start')
            result = original(*args, **kwargs)
            self.mark(f'{method}:end')
            return result

        setattr(owner, method, timed)

    def durations(self) -> Dict[str, float]:
        """Milliseconds of the step stages, of each frame's stages and the memory read; then
        the marks are cleared."""
        if self.cuda:
            torch.cuda.synchronize()
        names = [name for name, _ in self.marks]
        stamps = [stamp for _, stamp in self.marks]

        def elapsed(i: int, j: int) -> float:
            if self.cuda:
                return stamps[i].elapsed_time(stamps[j])
            return (stamps[j] - stamps[i]) * 1000

        result: Dict[str, float] = {}
        for stage, following in zip(STEP_STAGES, STEP_STAGES[1:] + ('end',)):
            result[stage] = elapsed(names.index(stage), names.index(following))
        occurrences: Dict[str, List[int]] = defaultdict(list)
        for i, name in enumerate(names):
            occurrences[name].append(i)
        for stage in CLIP_STAGES:
            result[f'{stage} (all frames)'] = elapsed(occurrences[f'{stage}:start'][0],
                                                      occurrences[f'{stage}:end'][0])
        for frame, start in enumerate(occurrences['memorize:start'], start=1):
            position = frame - 1
            prefix = f'frame {frame}'
            result[prefix] = elapsed(start, occurrences['aggregate:end'][position])
            for stage in FRAME_STAGES:
                result[f'{prefix} {stage}'] = elapsed(occurrences[f'{stage}:start'][position],
                                                      occurrences[f'{stage}:end'][position])
            result[f'{prefix} memory read'] = elapsed(occurrences['query_region:end'][position],
                                                      occurrences['decode:start'][position])
        self.marks = []
        return result


def benchmark_cfg(precision: str, channels_last: bool, graphs: bool = True):
    cfg = copy.deepcopy(default_cfg)
    cfg.TRAIN.CUDA_GRAPHS = graphs
    cfg.TRAIN.N_MAX_OBJECTS = MAX_OBJECTS
    cfg.TRAIN.N_MAX_FRAMES = N_FRAMES
    cfg.TRAIN.MEMORIZE_EVERY = 1
    cfg.TRAIN.PRECISION = precision
    cfg.TRAIN.CHANNELS_LAST = channels_last
    cfg.TRAIN.PRETRAINED_BACKBONE = False
    return cfg


def build_step(cfg, weights: Optional[str], device: torch.device,
               timer: StageTimer) -> Tuple[TrainingStep, Callable, torch.nn.Module]:
    """The training step of `python runner.py` on a fresh RMNet (frozen BatchNorm, Adam): the
    step itself (its stages timed by `timer` when enabled) and what a run calls, the step
    replayed as CUDA graphs when cfg.TRAIN.CUDA_GRAPHS applies."""
    _, rmnet = build_networks(cfg, weights)
    rmnet.to(device).train()
    freeze_batch_norm(rmnet)
    use_channels_last(cfg, rmnet, device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = cfg.TRAIN.CUDNN_BENCHMARK
    graphs = graphs_apply(cfg, device, 1, cfg.TRAIN.PRECISION)
    optimizer = build_optimizer(cfg, rmnet, device, capturable=graphs)
    scaler = torch.amp.GradScaler('cuda', enabled=False)
    for method in CLIP_STAGES + FRAME_STAGES:
        timer.wrap(rmnet, method)
    step = TrainingStep(cfg, rmnet, optimizer, scaler, device, 'RMNet', cfg.TRAIN.PRECISION, mark=timer.mark)
    return step, training_step(cfg, step, graphs), rmnet


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_one(cfg, weights: Optional[str], device: torch.device, batch_size: int, crop: int, n_objects: int,
            steps: int, warmup: int, profile: bool, profile_ops: int, sync_report: bool) -> Dict[str, Any]:
    timer = StageTimer(device)
    eager, step, rmnet = build_step(cfg, weights, device, timer)
    batch = synthetic_batch(batch_size, crop, device, n_objects=n_objects)
    if warmup:
        step(batch)                 # cuDNN tries out its kernels
    synchronize(device)
    if device.type == 'cuda':       # the peak from here: a graph's memory is allocated at its capture
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup - 1):
        step(batch)
    synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        terms, _ = step(batch)
        synchronize(device)
        times.append(time.perf_counter() - start)
    if not torch.isfinite(terms).all():
        raise RuntimeError(f'non-finite loss terms {terms.tolist()} on the synthetic batch')
    median = statistics.median(times)
    result: Dict[str, Any] = {
        'precision': cfg.TRAIN.PRECISION, 'batch': batch_size, 'crop': crop,
        'objects': n_objects, 'channels_last': bool(cfg.TRAIN.CHANNELS_LAST and device.type == 'cuda'),
        'graphs': step is not eager, 'steps': steps, 'step_ms': median * 1000,
        'samples_per_s': batch_size / median,
        'peak_gib': torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == 'cuda' else None,
        'peak_reserved_gib': torch.cuda.max_memory_reserved(device) / 2 ** 30 if device.type == 'cuda' else None}
    if profile:
        timer.enabled = True
        per_step = []
        for _ in range(steps):
            eager(batch)
            per_step.append(timer.durations())
        timer.enabled = False
        result['stages_ms'] = {name: statistics.median(d[name] for d in per_step) for name in per_step[0]}
    if profile_ops:
        result['top_ops'] = top_operators(eager, batch, device, profile_ops)
    if sync_report and device.type == 'cuda':
        result['synchronisations'] = synchronisations(step, batch)
    del step, eager, rmnet, batch
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def top_operators(step: Callable, batch: Dict[str, Any], device: torch.device, rows: int) -> str:
    """torch.profiler's table of one step's operators, by device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        step(batch)
        synchronize(device)
    key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def synchronisations(step: Callable, batch: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Where one step makes the host wait for the GPU (torch.cuda.set_sync_debug_mode)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            step(batch)
        finally:
            torch.cuda.set_sync_debug_mode('default')
    counts = Counter((f'{w.filename}:{w.lineno}', str(w.message).splitlines()[0]) for w in caught
                     if 'synchroniz' in str(w.message))
    return [{'where': where, 'what': what, 'count': n} for (where, what), n in counts.most_common()]


def print_table(runs: Sequence[Dict[str, Any]]) -> None:
    sizes = list(dict.fromkeys((r['batch'], r['crop']) for r in runs))
    columns = list(dict.fromkeys((r['precision'], r['graphs']) for r in runs))
    names = [f"{p}{' graphed' if g else ''} samples/s" for p, g in columns]
    print(f"{'batch x crop':>12} " + ' '.join(f'{name:>24} {"GiB (reserved)":>14}' for name in names))
    for batch, crop in sizes:
        row = f'{f"{batch} x {crop}":>12} '
        for precision, graphs in columns:
            run = next(r for r in runs if (r['batch'], r['crop'], r['precision'], r['graphs'])
                       == (batch, crop, precision, graphs))
            memory = '-' if run['peak_gib'] is None else f"{run['peak_gib']:.2f} ({run['peak_reserved_gib']:.2f})"
            row += f"{run['samples_per_s']:>24.2f} {memory:>14} "
        print(row)


def print_profile(run: Dict[str, Any]) -> None:
    print(f"\n{run['precision']}, batch {run['batch']} x crop {run['crop']}: median ms per stage")
    for name, ms in run.get('stages_ms', {}).items():
        indent = '    ' if name.startswith('frame ') and name.count(' ') > 1 else '  '
        print(f'{indent}{name:<28} {ms:9.2f}')
    if 'top_ops' in run:
        print(run['top_ops'])
    for sync in run.get('synchronisations', []):
        print(f"  sync x{sync['count']}: {sync['where']}  {sync['what']}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=parse_size, nargs='+', default=None,
                        help='BATCHxCROP (default 4x465 8x232; --quick: 2x64)')
    parser.add_argument('--precisions', nargs='+', default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument('--steps', type=positive_int, default=None, help='timed steps (default 10; --quick: 2)')
    parser.add_argument('--warmup', type=non_negative_int, default=None, help='untimed steps first (default 3; --quick: 1)')
    parser.add_argument('--objects', type=positive_int, default=N_OBJECTS,
                        help=f'objects per clip (at most {MAX_OBJECTS}; default {N_OBJECTS})')
    parser.add_argument('--modes', nargs='+', default=None, choices=MODES,
                        help='the step replayed as CUDA graphs (TRAIN.CUDA_GRAPHS) and/or launched '
                             'kernel by kernel (default: both on a GPU, eager on the CPU)')
    parser.add_argument('--contiguous', action='store_true',
                        help='TRAIN.CHANNELS_LAST off (NCHW weights and activations)')
    parser.add_argument('--weights', default=None, help='checkpoint to start from (default: random weights)')
    parser.add_argument('--profile', action='store_true', help='per-stage times (CUDA events)')
    parser.add_argument('--profile-ops', type=non_negative_int, default=0, metavar='N',
                        help='print the top N operators of torch.profiler')
    parser.add_argument('--sync-report', action='store_true', help='list the host synchronisations of a step (CUDA)')
    parser.add_argument('--quick', action='store_true', help='tiny sizes and few steps (a check on the CPU)')
    parser.add_argument('--out', default='benchmark_train.json')
    args = parser.parse_args(argv)
    if args.objects > MAX_OBJECTS:
        print(f'error: --objects {args.objects}: at most {MAX_OBJECTS} (TRAIN.N_MAX_OBJECTS)', file=sys.stderr)
        return 2
    sizes = args.sizes or ([(2, 64)] if args.quick else [(4, 465), (8, 232)])
    steps = args.steps or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if torch.cuda.is_available():
        device = torch.device('cuda')
    elif args.quick:
        device = torch.device('cpu')
    else:
        print('error: the training benchmark needs a CUDA GPU (--quick runs tiny sizes on the CPU)',
              file=sys.stderr)
        return 2
    try:
        check_new_result(args.out)
    except DataError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    channels_last = not args.contiguous and device.type == 'cuda'
    results: Dict[str, Any] = {'device': name, 'torch': torch.__version__, 'channels_last': channels_last,
                               'frames': N_FRAMES, 'objects': args.objects, 'max_objects': MAX_OBJECTS,
                               'weights': args.weights or 'random', 'runs': []}
    print(f'{name}, torch {torch.__version__}, {N_FRAMES} frames, {args.objects} objects '
          f'(N_MAX_OBJECTS {MAX_OBJECTS}), median of {steps} steps after {warmup}, '
          + ('channels-last' if channels_last else 'NCHW'), flush=True)
    modes = args.modes or (list(MODES) if device.type == 'cuda' else ['eager'])
    for precision in args.precisions:
        for mode in modes:
            cfg = benchmark_cfg(precision, not args.contiguous, graphs=mode == 'graphed')
            for batch, crop in sizes:
                results['runs'].append(run_one(cfg, args.weights, device, batch, crop, args.objects, steps,
                                               warmup, args.profile, args.profile_ops, args.sync_report))
    print_table(results['runs'])
    if args.profile or args.profile_ops or args.sync_report:
        for run in results['runs']:
            print_profile(run)
    write_json(args.out, results)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
