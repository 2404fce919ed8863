#!/usr/bin/env python3
"""RMNet from the command line.

    python runner.py                                     train (core/train.py)
    python runner.py --test --weights=RMNet-DAVIS.pth    segment and score cfg.DATASET.TEST_DATASET
    python runner.py --inference --weights=davis         benchmark result files and submission zip
    python runner.py --inference --video clip.mp4 --mask first.png [--mask 40:new.png]
    python runner.py --benchmark --frames 30 100         speed benchmark (options of tools/benchmark.py)

Expected failures (unreadable data, bad masks, weights that do not fit, bad options, out of GPU
memory) print one `error: ...` message and exit with status 2 (utils/cli.py); Ctrl-C and SIGTERM
exit with 130 and 143 after removing the files being written.
"""
import argparse
import logging
import os
import random
import sys
from typing import Optional, Sequence

from config import cfg
from datasets.registry import SPLITS
from utils.cli import UserError, run_command
from utils.configuration import MIN_SHORT_SIDE
from utils.mask_input import parse_mask_spec

LOG_FORMAT = '%(asctime)s %(levelname)-7s %(name)s: %(message)s'
OWN_VIDEO_OPTIONS = ('mask', 'binary', 'resize_mask', 'overwrite')


class UsageError(UserError):
    """A request this build or these options cannot serve; the message says what to do."""


def short_side(text: str) -> int:
    """--size: 0 (the input size) or a short side of at least MIN_SHORT_SIDE pixels."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number of pixels, got {text!r}') from None
    if value != 0 and value < MIN_SHORT_SIDE:
        raise argparse.ArgumentTypeError(f'the short side must be 0 (the input size) or at least '
                                         f'{MIN_SHORT_SIDE} pixels, got {text}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = parser.add_mutually_exclusive_group()
    jobs.add_argument('--test', action='store_true', help='segment a benchmark split and score it')
    jobs.add_argument('--inference', action='store_true',
                      help='write benchmark result files, or segment your own video with --video')
    jobs.add_argument('--benchmark', nargs=argparse.REMAINDER, metavar='ARGS',
                      help='speed benchmark; every later argument goes to tools/benchmark.py')
    parser.add_argument('--cfg', metavar='FILE', help='config file merged into config.py: a Python file '
                        'defining cfg (a copy of config.py) or a JSON file of overrides')
    parser.add_argument('--set', nargs='+', action='extend', default=[], metavar='KEY VALUE',
                        help='config overrides, e.g. --set TEST.MEMORIZE_EVERY 3 TEST.FLIP_LR True')
    parser.add_argument('--gpu', metavar='IDS', help='GPUs to use, e.g. 0 or 0,1 (sets CUDA_VISIBLE_DEVICES)')
    parser.add_argument('--exp', metavar='NAME',
                        help='experiment name: outputs go to cfg.DIR.OUT_PATH/NAME (default: a timestamp)')
    parser.add_argument('--rand', action='store_true', help='no fixed seed (default: cfg.CONST.RNG_SEED)')
    parser.add_argument('--weights', metavar='W', help="checkpoint file, or 'davis' / 'youtubevos' for the "
                        "published weights (downloaded once); default: cfg.CONST.WEIGHTS, for --video davis")
    parser.add_argument('--resume', metavar='CKPT', help='training: continue a run from its checkpoint '
                        '(<experiment>/checkpoints/ckpt-last.pth) exactly where it stopped')
    parser.add_argument('--output', metavar='DIR', help='output folder of --test / --inference '
                        '(default: cfg.DIR.OUT_PATH/<experiment>)')
    parser.add_argument('--precision', choices=('fp32', 'bf16'), help='inference precision (default: '
                        'cfg.TEST.PRECISION; bf16 is faster and needs less GPU memory)')
    parser.add_argument('--size', type=short_side, metavar='S',
                        help=f'short side the networks run at (at least {MIN_SHORT_SIDE}), 0 for the input size (masks '
                             'keep the input size); default: cfg.TEST.VIDEO_SHORT_SIDE (480) for --video, '
                             'the input size for benchmark splits')
    parser.add_argument('--visualize', action='store_true',
                        help='also write overlays of the masks on the frames (cfg.TEST.VISUALIZE)')
    benchmark = parser.add_argument_group('benchmark splits (--test, --inference)')
    benchmark.add_argument('--dataset', choices=list(SPLITS), help='default: cfg.DATASET.TEST_DATASET')
    benchmark.add_argument('--split', metavar='S', help='default: cfg.DATASETS.<dataset>.TEST_SPLIT')
    own = parser.add_argument_group('your own video (--inference --video IN --mask M)')
    own.add_argument('--video', metavar='IN', help='video file or folder of frames')
    own.add_argument('--mask', action='append', type=parse_mask_spec, metavar='[FRAME:]FILE',
                     help='mask of the first frame (palette, binary/greyscale or colour image); repeat '
                          'as FRAME:FILE for objects that appear later')
    own.add_argument('--binary', action='store_true', help='also write 0/255 masks per object')
    own.add_argument('--resize-mask', action='store_true', help='resize masks of another size to the frames')
    own.add_argument('--overwrite', action='store_true', help='replace the masks/, binary/ and overlay.mp4 of '
                     'an earlier run in --output (without it a non-empty output folder is refused)')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the command line (argparse exits with status 2 on misuse)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for option, value in zip(argv, argv[1:]):
        if option == '--mask' and value[:1] == '-' and value[1:2].isdigit():
            parser.error(f'--mask {value}: frame numbers start at 0 (FRAME:FILE, e.g. --mask 40:late.png)')
    args = parser.parse_args(argv)
    if args.video is not None:
        if args.test or args.benchmark is not None:
            parser.error('--video goes with --inference')
        args.inference = True
        if not args.mask:
            parser.error('--video needs --mask FILE (the objects of the first frame)')
        if args.dataset or args.split:
            parser.error('--dataset and --split are for benchmark splits, not with --video')
    else:
        given = [f'--{name.replace("_", "-")}' for name in OWN_VIDEO_OPTIONS if getattr(args, name)]
        if given:
            parser.error(f'{", ".join(given)}: only with --video')
    if args.resume and (args.test or args.inference or args.benchmark is not None):
        parser.error('--resume: only when training')
    if not (args.test or args.inference):
        given = [f'--{name}' for name in ('dataset', 'split', 'output', 'size') if getattr(args, name) is not None]
        if given:
            parser.error(f'{", ".join(given)}: only with --test or --inference')
    return args


def configure(args: argparse.Namespace) -> None:
    """Apply the config file, the overrides and the options to the global cfg; seed the generators."""
    from utils.configuration import apply_overrides, check_test_options, load_config_file, merge_config

    if args.cfg:
        merge_config(cfg, load_config_file(args.cfg))
    apply_overrides(cfg, args.set)
    # no name: each job claims a new folder named by the time (core.streaming.experiment_dir),
    # so that runs started in the same second never share one
    cfg.CONST.EXP_NAME = args.exp or cfg.CONST.EXP_NAME
    if args.weights:
        cfg.CONST.WEIGHTS = args.weights
    if args.precision:
        cfg.TEST.PRECISION = args.precision
    if args.visualize:
        cfg.TEST.VISUALIZE = True
    if args.test or args.inference or args.video is not None:
        check_test_options(cfg)
    if not args.rand:
        import numpy as np
        import torch

        seed = int(cfg.CONST.RNG_SEED)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def run(args: argparse.Namespace) -> None:
    """Dispatch to the job the options ask for."""
    if args.benchmark is not None:
        from tools.benchmark import main as benchmark_main
        benchmark_main(args.benchmark)
    elif args.video is not None:
        from core.inference import segment_user_video
        segment_user_video(cfg, args.video, args.mask, weights=cfg.CONST.WEIGHTS or 'davis',
                           out_dir=args.output, short_side=args.size,
                           binary=args.binary, resize_mask=args.resize_mask, overwrite=args.overwrite)
    elif args.test or args.inference:
        weights = cfg.CONST.WEIGHTS
        if not weights:
            job = '--test' if args.test else '--inference'
            raise UsageError(f"{job} needs weights: --weights FILE, or --weights davis / youtubevos for "
                             f"the published ones")
        if args.test:
            from core.test import test_net as job_net
        else:
            from core.inference import inference_net as job_net
        job_net(cfg, weights, dataset=args.dataset, split=args.split,
                out_dir=args.output, short_side=args.size)
    else:
        from core.train import train_net
        train_net(cfg, resume=args.resume)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status (utils/cli.py: 0, 2 after an expected failure)."""
    return run_command(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> None:
    args = parse_args(argv)
    if args.gpu is not None:
        os.environ['CUDA_VISIBLE_DEVICES'] = args.gpu      # before torch initialises CUDA
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt='%H:%M:%S')

    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            configure(args)
            run(args)
    except torch.OutOfMemoryError as e:
        raise UsageError(f'out of GPU memory ({str(e).splitlines()[0]}); try a smaller --size '
                         f'(e.g. --size 360) or --precision bf16') from e
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):
            raise
        raise UsageError(f'out of memory ({str(e).splitlines()[0]}); try a smaller --size '
                         f'(e.g. --size 360)') from e


if __name__ == '__main__':
    sys.exit(main())
