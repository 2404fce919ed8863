"""Teacher flows with RAFT: file naming, the frame order given to the model, resuming, weights."""
import os
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_small

from datasets.video import Video
from utils.cli import run_command
from utils.compute_flows import backward_flow, compute_flows, load_raft, main, write_video_flows
from utils.io import read_flo
from utils.torchvision_weights import hub_path

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


def offline(monkeypatch, tmp_path):
    """An empty torch hub cache in tmp_path and no network."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)

    def urlopen(*args, **kwargs):
        raise urllib.error.URLError('Network is unreachable')
    monkeypatch.setattr(torch.hub, 'urlopen', urlopen)


def test_cached_raft_weights_are_loaded_without_a_download(tmp_path, monkeypatch):
    offline(monkeypatch, tmp_path)
    torch.manual_seed(0)
    state = raft_small(weights=None).state_dict()
    path = hub_path(Raft_Small_Weights.DEFAULT)
    os.makedirs(os.path.dirname(path))
    torch.save(state, path)
    model = load_raft('raft_small', CPU)
    assert not model.training
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
    with pytest.raises(ValueError, match='unknown flow model'):
        load_raft('flownet2', CPU)


def test_offline_without_weights_one_error_line(tmp_path, monkeypatch, capsys):
    offline(monkeypatch, tmp_path)
    assert run_command(main, ['--dataset', 'DAVIS', '--out', str(tmp_path / 'flows'), '--device', 'cpu']) == 2
    lines = capsys.readouterr().err.splitlines()
    path = hub_path(Raft_Large_Weights.DEFAULT)
    assert len(lines) == 1 and lines[0].startswith('error: ') and Raft_Large_Weights.DEFAULT.url in lines[0]
    assert path in lines[0] and 'Network is unreachable' in lines[0]
    assert not os.path.exists(path) and not (tmp_path / 'flows').exists()
