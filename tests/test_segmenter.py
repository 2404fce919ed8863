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
from utils.configuration import ConfigError
from utils.io import read_frame, read_mask
from utils.metrics import boundary_f, region_similarity


@pytest.fixture(scope='module')
def networks(synth_checkpoint):
    tflownet, rmnet = TinyFlowNet(), RMNet(default_cfg)
    load_networks(synth_checkpoint, tflownet=tflownet, rmnet=rmnet)
    return tflownet, rmnet


@pytest.fixture(scope='module')
def published_clip():
    clip = os.path.join(require_shared(PUBLISHED), 'clip')
    frames = [read_frame(p) for p in sorted(glob.glob(f'{clip}/JPEGImages/480p/synth/*.jpg'))]
    return frames, read_mask(f'{clip}/Annotations/480p/synth/00000.png')


def segmenter(networks, device='cpu', first_video=None, **test_options):
    cfg = copy.deepcopy(default_cfg)
    cfg.TEST.update(test_options)
    tflownet, rmnet = (copy.deepcopy(n) for n in networks)
    return VideoSegmenter(None, device, cfg=cfg, tflownet=tflownet, rmnet=rmnet, first_video=first_video)


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


def assert_matches_published_tta(probs, expected):
    """The tolerances of shared/fixtures/published_outputs/README.md."""
    difference = np.abs(probs[:, :3] - expected).max(axis=(1, 2, 3))
    assert difference[:5].max() < 1e-3, difference
    assert difference.max() < 1e-2, difference
    top_two = np.sort(expected, axis=1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] > 1e-2
    agreement = (probs.argmax(axis=1) == expected.argmax(axis=1))[decided].mean()
    assert agreement >= 0.9999, agreement


@pytest.mark.parametrize('flip', [False, True])
def test_test_time_augmentation_matches_the_published_code(networks, published_clip, flip):
    frames, first_mask = published_clip
    expected = np.load(os.path.join(PUBLISHED, 'expected_tta.npz'))['probs_scales_flip' if flip else 'probs_scales']
    seg = segmenter(networks, REGIONAL_READ=False, FRAME_SCALES=[0.75, 1.0, 1.25], FLIP_LR=flip)
    probs = probabilities(seg, frames, first_mask).numpy()
    assert probs.shape == (8, 11, 150, 270)
    assert_matches_published_tta(probs, expected)


def test_masks_stream_with_the_given_ids(networks, published_clip):
    frames, first_mask = published_clip
    ids = np.where(first_mask == 2, 9, np.where(first_mask == 1, 4, 0)).astype(np.uint8)
    masks = list(segmenter(networks).segment(iter(frames[:4]), ids))
    assert len(masks) == 4 and all(m.dtype == np.uint8 and m.shape == ids.shape for m in masks)
    assert np.array_equal(masks[0], ids)
    assert set(np.unique(np.concatenate(masks))) <= {0, 4, 9}


def test_release_frees_the_kept_branches_and_stops_an_unfinished_video(networks, published_clip):
    frames, first_mask = published_clip
    seg = segmenter(networks)
    before = list(seg.segment(frames[:3], first_mask))
    assert len(seg.prepared) == 1
    seg.release()
    assert len(seg.prepared) == 0
    after = list(seg.segment(frames[:3], first_mask))           # prepared again
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    running = seg.segment(frames[:3], first_mask)
    next(running)
    seg.release()                                # an interrupted video must not mask its error
    with pytest.raises(SegmentationError, match=r'release\(\) freed it'):
        list(running)
    with pytest.raises(ConfigError, match='KEPT_CAPTURES must be at least 1'):
        segmenter(networks, KEPT_CAPTURES=0)


def test_network_size_and_results_at_input_size(networks, published_clip):
    assert network_size(480, 854, 240) == (240, 427)
    assert network_size(150, 270, None) == (150, 270)
    frames, first_mask = published_clip
    cfg = copy.deepcopy(default_cfg)
    seg = VideoSegmenter(None, 'cpu', cfg=cfg, tflownet=copy.deepcopy(networks[0]),
                         rmnet=copy.deepcopy(networks[1]), short_side=96)
    masks = list(seg.segment(frames[:3], first_mask))
    assert all(m.shape == first_mask.shape for m in masks)


@pytest.mark.parametrize('kind', ['bool', '0/1', '0/255', 'id mask'])
def test_object_added_later(networks, published_clip, kind):
    frames, first_mask = published_clip
    seg = segmenter(networks)
    second = first_mask == 2
    if kind == 'id mask':
        seg.add_object(2, np.where(second, 3, 0).astype(np.uint8))
    else:
        mask = {'bool': second, '0/1': second.astype(np.uint8), '0/255': second.astype(np.uint8) * 255}[kind]
        seg.add_object(2, mask, object_id=3)
    only_first = np.where(first_mask == 1, 1, 0).astype(np.uint8)
    masks = list(seg.segment(frames[:4], only_first))
    assert 3 not in masks[0] and 3 not in masks[1]              # not there before frame 2
    assert np.array_equal(masks[2] == 3, second)
    assert (masks[3] == 3).any()


def test_a_later_mask_that_adds_nothing_is_an_error(networks, published_clip):
    frames, first_mask = published_clip
    seg = segmenter(networks)
    seg.add_object(2, np.where(first_mask == 1, 1, 0).astype(np.uint8))
    with pytest.raises(SegmentationError, match=r'frame 2 adds no object: its id\(s\) 1 are already known'):
        list(seg.segment(frames[:3], first_mask))


def test_several_videos_in_a_row_give_the_same_masks(networks, published_clip):
    frames, first_mask = published_clip
    seg = segmenter(networks)
    first_run = list(seg.segment(frames[:4], first_mask))
    seg.add_object(2, first_mask == 2, object_id=5)
    list(seg.segment(frames[:3], np.where(first_mask == 1, 1, 0).astype(np.uint8)))
    again = list(seg.segment(frames[:4], first_mask))          # the added object was for one video
    assert all(np.array_equal(a, b) for a, b in zip(first_run, again))
    assert not seg.rmnet.training and next(seg.rmnet.parameters()).dtype == torch.float32



def test_videos_of_another_size_in_between(networks, published_clip):
    frames, first_mask = published_clip
    seg = segmenter(networks)
    small = [np.ascontiguousarray(frame[::2, ::2]) for frame in frames[:3]]
    assert [m.shape for m in seg.segment(small, np.ascontiguousarray(first_mask[::2, ::2]))] == [small[0].shape[:2]] * 3
    again = list(seg.segment(frames[:3], first_mask))
    fresh = list(segmenter(networks).segment(frames[:3], first_mask))
    assert all(np.array_equal(a, b) for a, b in zip(again, fresh))


def test_one_video_at_a_time_per_segmenter(networks, published_clip):
    """A second segment() takes the segmenter over (an abandoned generator, e.g. one kept alive
    by a traceback, never blocks it); the first video then stops with an error, never silently."""
    frames, first_mask = published_clip
    seg = segmenter(networks)
    running = seg.segment(frames[:3], first_mask)
    first = next(running)
    second = list(seg.segment(frames[:3], first_mask))
    with pytest.raises(SegmentationError, match='another segment\\(\\) call took over'):
        next(running)
    assert len(second) == 3 and np.array_equal(second[0], first) and not seg.segmenting
    last = seg.segment(frames[:1], first_mask)      # taken over after its last frame: on a GPU that
    next(last)                                      # frame's mask would still be on its way
    list(seg.segment(frames[:3], first_mask))
    with pytest.raises(SegmentationError, match='took over'):
        next(last)
    assert len(list(seg.segment(frames[:3], first_mask))) == 3

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
    with pytest.raises(SegmentationError, match='before segment'):
        for _ in seg.segment(frames[:2], first_mask):
            seg.add_object(1, first_mask == 2, object_id=4)


def real_clips(n_frames=20):
    """Two DAVIS sequences with one object each, halved to 427x240."""
    clips = []
    for name in ('bear', 'car-turn'):
        folder = os.path.join(require_shared(SHARED_DAVIS_TRAIN), 'JPEGImages', '480p', name)
        frames = [read_frame(p)[::2, ::2].copy() for p in sorted(glob.glob(f'{folder}/*.jpg'))[:n_frames]]
        mask = read_mask(os.path.join(SHARED_DAVIS_TRAIN, 'Annotations', '480p', name, '00000.png'))[::2, ::2]
        clips.append((frames, (mask > 0).astype(np.uint8)))
    return clips


def fast_and_dense_on_the_gpu(networks, frames, first_mask, **options):
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        dense = probabilities(segmenter(networks, 'cuda', REGIONAL_READ=False, **options), frames, first_mask)
        fast = probabilities(segmenter(networks, 'cuda', REGIONAL_READ=True, **options), frames, first_mask)
    return fast, dense


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_fast_paths_on_the_gpu(networks, published_clip):
    fast, dense = fast_and_dense_on_the_gpu(networks, *published_clip)
    difference = (fast - dense[:, :fast.shape[1]]).abs().amax(dim=(1, 2, 3))
    assert difference[:5].max() < 1e-4 and difference.max() < 1e-3, difference


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_videos_in_a_row_reuse_the_graphs_on_the_gpu(networks, published_clip):
    frames, first_mask = published_clip
    seg = segmenter(networks, 'cuda', FRAME_SCALES=[1.0, 1.25], FLIP_LR=True)
    other = [np.ascontiguousarray(frame[:, ::-1]) for frame in frames[:5]]
    list(seg.segment(other, np.ascontiguousarray(first_mask[:, ::-1])))
    recurrence = seg.branches[0].recurrence
    graph = recurrence.graphed.graph
    again = probabilities(seg, frames, first_mask)
    assert seg.branches[0].recurrence is recurrence and recurrence.graphed.graph is graph
    fresh = probabilities(segmenter(networks, 'cuda', FRAME_SCALES=[1.0, 1.25], FLIP_LR=True), frames, first_mask)
    assert (again - fresh).abs().max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_graphs_are_kept_per_object_count_on_the_gpu(networks, published_clip):
    """Videos of a split alternate object counts: each count's graphs are captured once and
    replayed later. The captures share one memory pool, so a replay after another count's
    captures must still give what a fresh segmenter gives."""
    frames, first_mask = published_clip
    one_object = (first_mask == 1).astype(np.uint8)
    options = dict(FRAME_SCALES=[1.0, 1.25], FLIP_LR=True)
    seg = segmenter(networks, 'cuda', **options)
    two = probabilities(seg, frames, first_mask)
    recurrence = seg.branches[0].recurrence
    graph = recurrence.graphed.graph
    one = probabilities(seg, frames, one_object)
    again = probabilities(seg, frames, first_mask)
    assert seg.branches[0].recurrence is recurrence and recurrence.graphed.graph is graph
    assert len(seg.prepared) == 2
    assert (again - two).abs().max() < 1e-5
    fresh = probabilities(segmenter(networks, 'cuda', **options), frames, one_object)
    assert (one - fresh).abs().max() < 1e-5
    single = segmenter(networks, 'cuda', KEPT_CAPTURES=1, **options)
    probabilities(single, frames, first_mask)
    kept = single.branches[0].recurrence
    probabilities(single, frames, one_object)
    probabilities(single, frames, first_mask)
    assert single.branches[0].recurrence is not kept and len(single.prepared) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_a_lone_graph_is_captured_again_into_the_shared_pool_on_the_gpu(networks, published_clip):
    """The segmenter's only graph goes (a longer video reallocates the memory; another object
    count evicts the kept one) and the next capture goes into the same memory pool."""
    frames, first_mask = published_clip
    one_object = (first_mask == 1).astype(np.uint8)
    seg = segmenter(networks, 'cuda', KEPT_CAPTURES=1)
    probabilities(seg, frames[:3], first_mask)
    longer = probabilities(seg, frames, first_mask)
    other = probabilities(seg, frames, one_object)
    again = probabilities(seg, frames, first_mask)
    fresh = probabilities(segmenter(networks, 'cuda'), frames, first_mask)
    assert (longer - fresh).abs().max() < 1e-5 and (again - fresh).abs().max() < 1e-5
    fresh_one = probabilities(segmenter(networks, 'cuda'), frames, one_object)
    assert (other - fresh_one).abs().max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('flip', [False, True])
def test_fast_test_time_augmentation_on_the_gpu(networks, published_clip, flip):
    """A CUDA graph per variant gives the dense path's result, and the published one. With flip,
    frame 5 of this clip is ill-conditioned: frames normalised with 1e-5 of noise move frames 5-7
    by 0.06-0.07 on the CPU too, which the GPU's rounding does; there only frames 0-4 are held to
    the published values (the CPU test holds every frame)."""
    fast, dense = fast_and_dense_on_the_gpu(networks, *published_clip, FRAME_SCALES=[0.75, 1.0, 1.25], FLIP_LR=flip)
    difference = (fast - dense[:, :fast.shape[1]]).abs().amax(dim=(1, 2, 3))
    assert difference[:5].max() < 1e-3 and difference.max() < 1e-2, difference
    expected = np.load(os.path.join(PUBLISHED, 'expected_tta.npz'))['probs_scales_flip' if flip else 'probs_scales']
    compared = 5 if flip else len(expected)
    assert_matches_published_tta(fast.numpy()[:compared], expected[:compared])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_fast_path_without_triton_on_the_gpu(networks, published_clip, monkeypatch):
    """RMNET_NO_TRITON=1: the graph-safe PyTorch read inside the CUDA graphs gives the Triton
    path's and the dense path's result."""
    frames, first_mask = published_clip
    fast, dense = fast_and_dense_on_the_gpu(networks, frames, first_mask)
    monkeypatch.setenv('RMNET_NO_TRITON', '1')
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        no_triton = probabilities(segmenter(networks, 'cuda', REGIONAL_READ=True), frames, first_mask)
    for reference in (fast, dense[:, :fast.shape[1]]):
        difference = (no_triton - reference).abs().amax(dim=(1, 2, 3))
        assert difference[:5].max() < 1e-4 and difference.max() < 1e-3, difference


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_bf16_agrees_with_fp32_on_real_clips():
    weights = os.environ.get('RMNET_TRAINED_WEIGHTS')
    if not weights:
        pytest.skip('needs trained weights (RMNET_TRAINED_WEIGHTS): untrained networks give near-ties')
    networks = TinyFlowNet(), RMNet(default_cfg)
    load_networks(weights, tflownet=networks[0], rmnet=networks[1])
    for clip_frames, mask in real_clips():
        fp32 = list(segmenter(networks, 'cuda', PRECISION='fp32').segment(clip_frames, mask))
        bf16 = list(segmenter(networks, 'cuda', PRECISION='bf16').segment(clip_frames, mask))
        a, b = np.stack(fp32[1:]), np.stack(bf16[1:])
        assert (a == b).mean() >= 0.995
        j = np.mean([region_similarity(x == 1, y == 1) for x, y in zip(a, b)])
        f = np.mean([boundary_f(x == 1, y == 1) for x, y in zip(a, b)])
        assert (j + f) / 2 >= 0.99, (j, f)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_videos_warmed_up_ahead_give_what_fresh_segmenters_give_on_the_gpu(networks, published_clip, precision):
    """The segmenter starts with the first video's shapes, and warm_up runs throwaway steps of
    the next videos' shapes in the capture thread while this video replays its graphs (here a
    second object count and a second size, with flip): no video's probabilities change,
    against fresh segmenters."""
    frames, first_mask = published_clip
    one_object = (first_mask == 1).astype(np.uint8)
    small = [np.ascontiguousarray(frame[::2, ::2]) for frame in frames]
    small_mask = np.ascontiguousarray(first_mask[::2, ::2])
    options = dict(PRECISION=precision, FLIP_LR=True)
    seg = segmenter(networks, 'cuda', first_video=(2, first_mask.shape), **options)
    assert seg.warmed == {(2, first_mask.shape)} and seg.device == torch.device('cuda', torch.cuda.current_device())
    two = []
    for t, probs in enumerate(seg.segment_probabilities(frames, first_mask)):
        two.append(probs.float().cpu())
        if t == 1:                     # the graphs are captured: the warm-ups overlap replays
            seg.warm_up(1, one_object.shape)
            seg.warm_up(2, small_mask.shape)
    assert {(1, first_mask.shape), (2, small_mask.shape), (2, first_mask.shape)} <= seg.warmed
    one = probabilities(seg, frames, one_object)
    half = probabilities(seg, small, small_mask)
    for probs, (video, mask) in ((torch.stack(two), (frames, first_mask)), (one, (frames, one_object)),
                                 (half, (small, small_mask))):
        fresh = probabilities(segmenter(networks, 'cuda', **options), video, mask)
        assert (probs - fresh).abs().max() < 1e-5
