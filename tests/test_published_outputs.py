"""The closest thing to the published model offline: a published-format checkpoint and what the
published code computed with it on one clip (shared/fixtures/published_outputs)."""
import glob
import os

import numpy as np
import pytest
import torch

from config import cfg
from conftest import PUBLISHED, normalise, require_shared
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import load_networks
from utils.io import read_frame, read_mask


@pytest.fixture(scope='module')
def published(synth_checkpoint):
    clip = os.path.join(require_shared(PUBLISHED), 'clip')
    frames = np.stack([read_frame(p) for p in sorted(glob.glob(f'{clip}/JPEGImages/480p/synth/*.jpg'))])
    masks = np.stack([read_mask(p) for p in sorted(glob.glob(f'{clip}/Annotations/480p/synth/*.png'))])
    expected = dict(np.load(os.path.join(PUBLISHED, 'expected.npz')))
    tflownet, rmnet = TinyFlowNet().eval(), RMNet(cfg).eval()
    load_networks(synth_checkpoint, tflownet=tflownet, rmnet=rmnet)
    return {'frames': normalise(frames)[None], 'masks': torch.from_numpy(masks).long(),
            'expected': expected, 'tflownet': tflownet, 'rmnet': rmnet}


def test_tiny_flownet_matches_published_flows(published):
    with torch.no_grad():
        flows = published['tflownet'](published['frames'])[0].numpy()
    expected = published['expected']['flows']
    assert flows.shape == expected.shape
    assert np.abs(flows[0]).max() == 0
    assert np.abs(flows - expected).max() < 1e-4


def test_rmnet_forward_matches_published_probabilities(published):
    masks = torch.nn.functional.one_hot(published['masks'], 11).permute(0, 3, 1, 2)[None].float()
    flows = torch.from_numpy(published['expected']['flows'])[None]
    n_objects = torch.from_numpy(published['expected']['n_objects'])
    with torch.no_grad():
        probs = published['rmnet'](published['frames'], masks, flows, n_objects, 5)[0].numpy()
    expected = published['expected']['probs']
    assert probs.shape == (8, 11, 150, 270)
    difference = np.abs(probs[:, :3] - expected).max(axis=(1, 2, 3))
    assert difference[1:5].max() < 1e-3, difference
    assert difference.max() < 1e-2, difference
    agreement = (probs.argmax(axis=1) == expected.argmax(axis=1)).mean()
    assert agreement >= 0.999, agreement
    assert np.abs(probs[:, 3:]).max() < 1e-5
