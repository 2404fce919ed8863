"""Teacher flows with RAFT: file naming, the frame order given to the model, resuming, weights."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.optical_flow import raft_small

from conftest import ROOT
from datasets.video import Video
from utils.compute_flows import (MissingWeightsError, backward_flow, compute_flows, load_raft,
                                 weights_file, write_video_flows)
from utils.io import read_flo

CPU = torch.device('cpu')


class BrightnessDifference(torch.nn.Module):
    """A stand-in flow model: u = mean(image1) - mean(image2), v = 0, at every pixel."""

    def forward(self, image1, image2, num_flow_updates=12):
        flow = torch.zeros(image1.shape[0], 2, *image1.shape[-2:])
        flow[:, 0] = image1.mean() - image2.mean()
        return [flow]


def make_video(folder, levels=(10, 50, 200), size=(40, 56)):
    """Flat grey frames of the given levels, named 00000.jpg, 00005.jpg, ..."""
    os.makedirs(folder, exist_ok=True)
    names = [f'{5 * i:05d}' for i in range(len(levels))]
    paths = []
    for name, level in zip(names, levels):
        paths.append(os.path.join(folder, f'{name}.png'))
        Image.fromarray(np.full(size + (3,), level, np.uint8)).save(paths[-1])
    return Video(name='clip', frame_paths=paths, given_masks={}, output_names=names)


def test_flows_are_named_after_frames_and_computed_from_frame_t_to_t_minus_1(tmp_path):
    video = make_video(str(tmp_path / 'frames'))
    out = str(tmp_path / 'flows')
    assert write_video_flows(BrightnessDifference(), video, out, CPU) == 3
    assert sorted(os.listdir(os.path.join(out, 'clip'))) == ['00000.flo', '00005.flo', '00010.flo']
    flows = [read_flo(os.path.join(out, 'clip', f'{name}.flo')) for name in video.output_names]
    assert all(f.shape == (40, 56, 2) and f.dtype == np.float32 for f in flows)
    assert np.all(flows[0] == 0)                                  # frame 0: zero flow
    # frame t first, frame t-1 second: the brighter current frame gives a positive u
    assert flows[1][..., 0] == pytest.approx((50 - 10) / 127.5, abs=1e-6)
    assert flows[2][..., 0] == pytest.approx((200 - 50) / 127.5, abs=1e-6)
    assert np.all(flows[2][..., 1] == 0)


def test_existing_files_are_kept(tmp_path):
    video = make_video(str(tmp_path / 'frames'))
    out = str(tmp_path / 'flows')
    assert compute_flows([video], out, BrightnessDifference(), CPU) == {'clip': 3}
    path = os.path.join(out, 'clip', '00005.flo')
    os.remove(os.path.join(out, 'clip', '00010.flo'))
    before = os.path.getmtime(path)
    assert compute_flows([video], out, BrightnessDifference(), CPU) == {'clip': 1}
    assert os.path.getmtime(path) == before
    assert not [name for name in os.listdir(os.path.join(out, 'clip')) if name.startswith('.')]


def test_raft_runs_on_a_tiny_clip(tmp_path):
    torch.manual_seed(0)
    model = raft_small(weights=None).eval()
    video = make_video(str(tmp_path / 'frames'), levels=(30, 90))
    flow = backward_flow(model, *[np.array(Image.open(p)) for p in video.frame_paths[::-1]], CPU,
                         num_flow_updates=2)
    assert flow.shape == (40, 56, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    assert write_video_flows(model, video, str(tmp_path / 'flows'), CPU, num_flow_updates=2) == 2


def test_missing_weights_give_a_clear_error_without_downloading(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        expected = str(tmp_path / 'hub' / 'checkpoints' / 'raft_large_C_T_SKHT_V2-ff5fadd5.pth')
        assert weights_file('raft_large') == expected
        with pytest.raises(MissingWeightsError, match='this tool never downloads') as error:
            load_raft('raft_large', CPU)
        assert expected in str(error.value) and 'download.pytorch.org' in str(error.value)
        assert not os.path.exists(expected)
    finally:
        torch.hub.set_dir(previous)
    with pytest.raises(ValueError, match='unknown flow model'):
        load_raft('flownet2', CPU)


def test_command_without_raft_weights_is_one_error_line(tmp_path):
    command = [sys.executable, '-m', 'utils.compute_flows', '--dataset', 'DAVIS', '--out', str(tmp_path / 'flows'),
               '--device', 'cpu']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TORCH_HOME=str(tmp_path / 'torch')))
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'raft_large weights are not there' in lines[0]
    assert not os.path.exists(tmp_path / 'flows')
