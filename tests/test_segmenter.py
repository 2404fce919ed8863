"""VideoSegmenter: the streaming API, the fast paths against the published dense path, errors."""
import copy
import glob
import os

import numpy as np
import pytest
import torch

from config import cfg as default_cfg
from conftest import PUBLISHED, SHARED_DAVIS_TRAIN, require_shared
from core.segmenter import SegmentationError, VideoSegmenter, network_size
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet
from utils.checkpoint import load_networks
from utils.io import read_frame, read_mask
from utils.metrics import boundary_f, region_similarity


@pytest.fixture(scope='module')
def networks(synth_checkpoint):
    tflownet, rmnet = TinyFlowNet(), RMNet()
    load_networks(synth_checkpoint, tflownet=tflownet, rmnet=rmnet)
    return tflownet, rmnet


@pytest.fixture(scope='module')
def published_clip():
    clip = os.path.join(require_shared(PUBLISHED), 'clip')
    frames = [read_frame(p) for p in sorted(glob.glob(f'{clip}/JPEGImages/480p/synth/*.jpg'))]
    return frames, read_mask(f'{clip}/Annotations/480p/synth/00000.png')


def segmenter(networks, device='cpu', **test_options):
    cfg = copy.deepcopy(default_cfg)
    cfg.TEST.update(test_options)
    tflownet, rmnet = (copy.deepcopy(n) for n in networks)
    return VideoSegmenter(None, device, cfg=cfg, tflownet=tflownet, rmnet=rmnet)


def probabilities(seg, frames, first_mask):
    return torch.stack([p.float().cpu() for p in seg.segment_probabilities(frames, first_mask)])


def test_regional_read_matches_the_published_dense_path(networks, published_clip):
    frames, first_mask = published_clip
    dense = probabilities(segmenter(networks, REGIONAL_READ=False), frames, first_mask)
    fast = probabilities(segmenter(networks, REGIONAL_READ=True), frames, first_mask)
    difference = (fast - dense).abs().amax(dim=(1, 2, 3))
    # one step alone agrees to ~1e-6; the frame-to-frame recurrence amplifies rounding
    assert difference[:5].max() < 1e-4, difference
    assert difference.max() < 1e-3, difference
    assert (fast.argmax(1) == dense.argmax(1)).float().mean() >= 0.999


def test_masks_stream_with_the_given_ids(networks, published_clip):
    frames, first_mask = published_clip
    ids = np.where(first_mask == 2, 9, np.where(first_mask == 1, 4, 0)).astype(np.uint8)
    masks = list(segmenter(networks).segment(iter(frames[:4]), ids))
    assert len(masks) == 4 and all(m.dtype == np.uint8 and m.shape == ids.shape for m in masks)
    assert np.array_equal(masks[0], ids)
    assert set(np.unique(np.concatenate(masks))) <= {0, 4, 9}


def test_network_size_and_results_at_input_size(networks, published_clip):
    assert network_size(480, 854, 240) == (240, 427)
    assert network_size(150, 270, None) == (150, 270)
    frames, first_mask = published_clip
    cfg = copy.deepcopy(default_cfg)
    seg = VideoSegmenter(None, 'cpu', cfg=cfg, tflownet=copy.deepcopy(networks[0]),
                         rmnet=copy.deepcopy(networks[1]), short_side=96)
    masks = list(seg.segment(frames[:3], first_mask))
    assert all(m.shape == first_mask.shape for m in masks)


def test_object_added_later(networks, published_clip):
    frames, first_mask = published_clip
    seg = segmenter(networks)
    seg.add_object(2, (first_mask == 2))
    only_first = np.where(first_mask == 1, 1, 0).astype(np.uint8)
    probs = probabilities(seg, frames[:4], only_first)
    assert probs[1, 2].max() < 1e-6                              # not there before frame 2
    assert torch.equal(probs[2].argmax(0) == 2, torch.from_numpy(first_mask == 2))


def test_bad_inputs_are_named(networks, published_clip):
    frames, first_mask = published_clip
    seg = segmenter(networks, N_MAX_OBJECTS=1)
    with pytest.raises(SegmentationError, match='2 objects, but TEST.N_MAX_OBJECTS is 1'):
        list(seg.segment(frames[:2], first_mask))
    seg = segmenter(networks)
    with pytest.raises(SegmentationError, match='no object'):
        list(seg.segment(frames[:2], np.zeros_like(first_mask)))
    with pytest.raises(SegmentationError, match='mask size 20x10 differs from the frame size 270x150'):
        list(seg.segment(frames[:2], np.ones((10, 20), np.uint8)))
    with pytest.raises(SegmentationError, match='uint8 RGB'):
        list(seg.segment([frames[0].astype(np.float32)], first_mask))
    with pytest.raises(SegmentationError, match='differs from the first frame'):
        list(seg.segment([frames[0], frames[1][:100]], first_mask))
    with pytest.raises(SegmentationError, match='after the first'):
        seg.add_object(0, first_mask)


def real_clips(n_frames=20):
    """Two DAVIS sequences with one object each, halved to 427x240."""
    clips = []
    for name in ('bear', 'car-turn'):
        folder = os.path.join(require_shared(SHARED_DAVIS_TRAIN), 'JPEGImages', '480p', name)
        frames = [read_frame(p)[::2, ::2].copy() for p in sorted(glob.glob(f'{folder}/*.jpg'))[:n_frames]]
        mask = read_mask(os.path.join(SHARED_DAVIS_TRAIN, 'Annotations', '480p', name, '00000.png'))[::2, ::2]
        clips.append((frames, (mask > 0).astype(np.uint8)))
    return clips


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_fast_paths_on_the_gpu(networks, published_clip):
    frames, first_mask = published_clip
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        dense = probabilities(segmenter(networks, 'cuda', REGIONAL_READ=False), frames, first_mask)
        fast = probabilities(segmenter(networks, 'cuda', REGIONAL_READ=True), frames, first_mask)
    difference = (fast - dense[:, :fast.shape[1]]).abs().amax(dim=(1, 2, 3))
    assert difference[:5].max() < 1e-4 and difference.max() < 1e-3, difference


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_bf16_agrees_with_fp32_on_real_clips():
    weights = os.environ.get('RMNET_TRAINED_WEIGHTS')
    if not weights:
        pytest.skip('needs trained weights (RMNET_TRAINED_WEIGHTS): untrained networks give near-ties')
    networks = TinyFlowNet(), RMNet()
    load_networks(weights, tflownet=networks[0], rmnet=networks[1])
    for clip_frames, mask in real_clips():
        fp32 = list(segmenter(networks, 'cuda', PRECISION='fp32').segment(clip_frames, mask))
        bf16 = list(segmenter(networks, 'cuda', PRECISION='bf16').segment(clip_frames, mask))
        a, b = np.stack(fp32[1:]), np.stack(bf16[1:])
        assert (a == b).mean() >= 0.995
        j = np.mean([region_similarity(x == 1, y == 1) for x, y in zip(a, b)])
        f = np.mean([boundary_f(x == 1, y == 1) for x, y in zip(a, b)])
        assert (j + f) / 2 >= 0.99, (j, f)
