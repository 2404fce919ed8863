"""The memory read alone: the published dense read (MemoryBank) vs the regional read (PackedMemoryBank).

    python tools/benchmark_memory_read.py --out memory_read.json
    python tools/benchmark_memory_read.py --sweep --out memory_read_sweep.json   (+ tile sizes)
    python tools/benchmark_memory_read.py --quick                     (tiny sizes, CPU is fine)

For each number of kept frames (the read covers them and the latest frame) and dtype, both
banks hold the same random keys (128 channels) and values (512) with box regions about a
third of each side of the 30 x 54 feature map (480 x 864 frames), and read the same query.
On a GPU each read is captured in a CUDA graph after one eager call, as in the frame loop,
and the replays are timed with CUDA events. GB/s and TFLOP/s count the useful work of the
read: the in-region keys and values, and 2 * (Ck + Cv) flops per in-region (query, memory)
pair. `max_diff` is the largest difference between the two reads.
"""
import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.memory_bank import MemoryBank  # noqa: E402
from models.packed_memory import PackedMemoryBank, pack_order, pack_positions  # noqa: E402
from utils.io import DataError, check_new_result, write_json  # noqa: E402

DTYPES = {'bf16': torch.bfloat16, 'fp32': torch.float32}
KEY_DIM, VALUE_DIM = 128, 512


def box_region(n: int, height: int, width: int, fraction: float, shift: int, device) -> torch.Tensor:
    """(n, height, width) 0/1: a box of `fraction` of each side per object, moved by `shift`."""
    region = torch.zeros(n, height, width, device=device)
    box_h, box_w = max(1, round(height * fraction)), max(1, round(width * fraction))
    for i in range(n):
        top = (height // 4 + 3 * i + shift) % (height - box_h + 1)
        left = (width // 4 + 5 * i + 2 * shift) % (width - box_w + 1)
        region[i, top:top + box_h, left:left + box_w] = 1
    return region


def filled_banks(kept: int, n: int, height: int, width: int, fraction: float, dtype, device):
    """Both banks after `kept` kept frames and the latest one, and the in-region counts."""
    g = torch.Generator(device=device).manual_seed(kept)
    dense, packed = MemoryBank(), PackedMemoryBank(kept + 1)
    memory_positions = torch.zeros(n, device=device)
    for t in range(kept + 1):
        key = (torch.randn(n, KEY_DIM, height, width, generator=g, device=device) * 0.15).to(dtype)
        value = torch.randn(n, VALUE_DIM, height, width, generator=g, device=device).to(dtype)
        region = box_region(n, height, width, fraction, t % 7, device)
        memory_positions += region.flatten(1).sum(dim=1)
        for bank in (dense, packed):
            bank.write_latest(key, value, region)
            if t < kept:
                bank.keep()
    return dense, packed, memory_positions


def timed(read: Callable[[], torch.Tensor], repeats: int, graph: bool) -> Tuple[float, torch.Tensor]:
    """Milliseconds per call and the result (CUDA: graph replays timed with events)."""
    out = read()
    if not out.is_cuda:
        start = time.perf_counter()
        for _ in range(repeats):
            out = read()
        return (time.perf_counter() - start) * 1000 / repeats, out
    if graph:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            out = read()
        run = cuda_graph.replay
    else:
        run = read
    run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats, out


def measure(kept: int, dtype_name: str, args, device) -> Tuple[List[Dict], List[Dict]]:
    dtype = DTYPES[dtype_name]
    n, height, width = args.objects, args.height, args.width
    dense, packed, memory_positions = filled_banks(kept, n, height, width, args.box, dtype, device)
    g = torch.Generator(device=device).manual_seed(12345)
    query_key = (torch.randn(n, KEY_DIM, height, width, generator=g, device=device) * 0.15).to(dtype)
    query_value = torch.randn(n, VALUE_DIM, height, width, generator=g, device=device).to(dtype)
    query_region = box_region(n, height, width, args.box, 3, device)
    query_positions = query_region.flatten(1).sum(dim=1)
    element = torch.finfo(dtype).bits // 8
    useful_bytes = float(memory_positions.sum()) * (KEY_DIM + VALUE_DIM) * element
    useful_flops = 2.0 * float((memory_positions * query_positions).sum()) * (KEY_DIM + VALUE_DIM)

    def read_dense():
        return dense.read(query_key, query_value, query_region)

    def read_packed():
        return packed.read(query_key, query_value, query_region)

    graph = not args.eager
    runs, outputs = [], {}
    for path, read in (('dense', read_dense), ('packed', read_packed)):
        ms, outputs[path] = timed(read, args.repeats, graph)
        runs.append({'kept': kept, 'dtype': dtype_name, 'path': path, 'ms': ms,
                     'gb_per_s': useful_bytes / ms / 1e6, 'tflop_per_s': useful_flops / ms / 1e9})
    difference = float((outputs['dense'].float() - outputs['packed'].float()).abs().max())
    for run in runs:
        run['max_diff'] = difference
    sweep = []
    if args.sweep and device.type == 'cuda':
        sweep = sweep_configs(packed, query_key, query_region, kept, dtype_name, args.repeats, graph,
                              useful_bytes, useful_flops)
    del dense, packed, outputs
    return runs, sweep


def sweep_configs(packed, query_key, query_region, kept, dtype_name, repeats, graph,
                  useful_bytes, useful_flops) -> List[Dict]:
    """The packed kernels alone (query packing excluded) for every candidate tile size."""
    from models.packed_read_triton import CANDIDATE_CONFIGS, packed_read_triton
    order, count = pack_order(query_region.flatten(1))
    query_keys = packed.as_stored(pack_positions(query_key, order), packed.planes[0]).contiguous()
    n, positions = order.shape
    outside = torch.zeros(n, device=order.device)
    out = torch.zeros(n, VALUE_DIM, positions, device=order.device, dtype=query_key.dtype)
    results = []
    for config in CANDIDATE_CONFIGS[DTYPES[dtype_name]]:
        def kernel():
            packed_read_triton(packed.keys, packed.values, packed.slot_count, packed.n_read, query_keys,
                               order, count, outside, out, planes=packed.planes, config=config)
            return out
        ms, _ = timed(kernel, repeats, graph)
        results.append({'kept': kept, 'dtype': dtype_name, 'config': list(config), 'ms': ms,
                        'gb_per_s': useful_bytes / ms / 1e6, 'tflop_per_s': useful_flops / ms / 1e9})
        print(f'  sweep {dtype_name} kept {kept} tiles {config}: {ms:.3f} ms', flush=True)
    return results


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kept', type=int, nargs='+', default=[13, 200, 500], help='kept frames')
    parser.add_argument('--objects', type=int, default=2)
    parser.add_argument('--height', type=int, default=30, help='feature map rows (480 / 16)')
    parser.add_argument('--width', type=int, default=54, help='feature map columns (864 / 16)')
    parser.add_argument('--box', type=float, default=1 / 3, help='region box side / map side')
    parser.add_argument('--dtypes', nargs='+', default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument('--repeats', type=int, default=None, help='timed calls (default 50, --quick 3)')
    parser.add_argument('--eager', action='store_true', help='time eager calls, not graph replays')
    parser.add_argument('--sweep', action='store_true', help='also time every candidate tile size')
    parser.add_argument('--quick', action='store_true', help='tiny sizes (2 and 5 kept frames, 9 x 14)')
    parser.add_argument('--out', default=None, help='JSON results (must not exist yet)')
    args = parser.parse_args(argv)
    if args.quick:
        args.kept, args.height, args.width = [2, 5], 9, 14
    if args.repeats is None:
        args.repeats = 3 if args.quick else 50
    try:
        args.out and check_new_result(args.out)
    except DataError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.quick:
        print('error: the benchmark needs a CUDA GPU (or --quick)', file=sys.stderr)
        return 2
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    name = torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
    results = {'device': name, 'torch': torch.__version__, 'positions': [args.height, args.width],
               'objects': args.objects, 'box': args.box,
               'timing': 'cuda graph' if device.type == 'cuda' and not args.eager else 'eager',
               'runs': [], 'sweep': []}
    print(f'{name}, torch {torch.__version__}, {args.objects} objects, {args.height}x{args.width} positions, '
          f'boxes {args.box:.2f} of each side, {results["timing"]}')
    print(f'{"kept":>5} {"dtype":>5} {"dense ms":>10} {"packed ms":>10} {"speed-up":>8} '
          f'{"packed GB/s":>11} {"TFLOP/s":>8} {"max diff":>9}')
    for dtype_name in args.dtypes:
        for kept in args.kept:
            runs, sweep = measure(kept, dtype_name, args, device)
            results['runs'] += runs
            results['sweep'] += sweep
            dense, packed = runs
            print(f'{kept:>5} {dtype_name:>5} {dense["ms"]:>10.3f} {packed["ms"]:>10.3f} '
                  f'{dense["ms"] / packed["ms"]:>8.1f} {packed["gb_per_s"]:>11.1f} '
                  f'{packed["tflop_per_s"]:>8.2f} {packed["max_diff"]:>9.2e}', flush=True)
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == '__main__':
    sys.exit(main())
