"""tools/benchmark.py: a machine without a CUDA GPU is a user error (status 2), not a crash;
the split mode's synthetic split mixes object counts in a layout --test reads."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from config import cfg as default_cfg
from conftest import ROOT
from core.sequences import benchmark_videos
from tools.benchmark import write_split
from utils.io import read_mask


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without a CUDA GPU')
def test_without_a_gpu_the_benchmark_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '--frames', '2',
                           '--out', str(tmp_path / 'benchmark.json')], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path))
    assert done.returncode == 2
    assert done.stderr == 'error: the benchmark needs a CUDA GPU (none is visible to PyTorch)\n'
    assert not os.path.exists(tmp_path / 'benchmark.json')


def test_the_split_mode_writes_videos_of_each_object_count_in_turn(tmp_path):
    write_split(str(tmp_path / 'DAVIS'), 5, 3, 48, 80, [1, 3])
    cfg = copy.deepcopy(default_cfg)
    cfg.DATASETS.DAVIS.ROOT = str(tmp_path / 'DAVIS')
    videos = benchmark_videos(cfg, 'DAVIS', 'val')
    counts = [len(np.unique(read_mask(video.ground_truth[0]))) - 1 for video in videos]
    assert counts == [1, 3, 1, 3, 1]
    assert all(len(video.ground_truth) == 3 for video in videos)
