"""The frame loop: which frames are kept in memory, objects that appear later, absent objects."""
import pytest
import torch

from core.inference_core import InferenceCore, present_channels
from models.rmnet import ABSENT_LOGIT, RMNet


@pytest.fixture(scope='module')
def network():
    torch.manual_seed(0)
    return RMNet().eval()


def clip(n_frames, height=32, width=48, channels=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(n_frames, 1, 3, height, width, generator=generator)
    ids = torch.zeros(height, width, dtype=torch.long)
    ids[4:14, 4:20] = 1
    ids[18:30, 26:44] = 2
    masks = torch.nn.functional.one_hot(ids, channels).permute(2, 0, 1)[None].float()
    flow = torch.zeros(1, 2, height, width)
    return frames, masks, flow


def only_object_1(masks):
    """The clip's first mask without object 2 (it appears later, or never)."""
    first = masks.clone()
    first[:, 2] = 0
    first[:, 0] = 1 - first[:, 1]
    return first


def run(core, frames, masks, flow, new_masks=None):
    """Run the loop and record, per step, the number of frames read and kept."""
    read_sizes, kept = [], []
    core.start(frames[0], masks)
    read_set = core.memory.read_set

    def recording_read_set(*args):
        out = read_set(*args)
        read_sizes.append(out[0].shape[2])
        return out

    core.memory.read_set = recording_read_set
    outputs = []
    for t in range(1, len(frames)):
        outputs.append(core.step(frames[t], flow, (new_masks or {}).get(t)))
        kept.append(len(core.memory))
    return outputs, read_sizes, kept


@torch.no_grad()
def test_memory_schedule_every_five_frames(network):
    frames, masks, flow = clip(12)
    core = InferenceCore(network, [2], memorize_every=5)
    _, read_sizes, kept = run(core, frames, masks, flow)
    # kept frames: 0, 5, 10; every step also reads the frame just before it
    assert kept == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    assert read_sizes == [1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]


@torch.no_grad()
def test_frame_with_new_object_is_kept_and_object_takes_its_mask(network):
    frames, masks, flow = clip(6)
    first = only_object_1(masks)
    later_ids = torch.zeros(32, 48, dtype=torch.long)
    later_ids[18:30, 26:44] = 2
    later = torch.nn.functional.one_hot(later_ids, 4).permute(2, 0, 1)[None].float()
    core = InferenceCore(network, [2], memorize_every=5)
    outputs, _, kept = run(core, frames, first, flow, new_masks={3: later})
    assert kept == [1, 1, 1, 2, 2]                   # frame 3 kept because object 2 appeared in it
    for t in (1, 2):                                  # object 2 absent before frame 3
        assert outputs[t - 1][0, 2].max() < 1e-6
    at_appearance = outputs[2][0].argmax(0)
    assert torch.equal(at_appearance == 2, later_ids == 2)
    assert outputs[3][0, 2].max() > 1e-3              # it exists afterwards
    for out in outputs:
        assert out[0, 3].max() < 1e-6                 # channel beyond the video's objects
        assert torch.allclose(out.sum(1), torch.ones(1, 32, 48), atol=1e-5)


@torch.no_grad()
def test_objects_absent_from_the_first_mask_stay_absent(network):
    frames, masks, flow = clip(3)
    only_one = only_object_1(masks)
    core = InferenceCore(network, [2], memorize_every=5)
    outputs, _, _ = run(core, frames, only_one, flow)
    logits_floor = torch.softmax(torch.tensor([0.0, ABSENT_LOGIT]), 0)[1]
    assert all(out[0, 2].max() <= logits_floor for out in outputs)


def test_present_channels():
    masks = torch.zeros(2, 4, 5, 5)
    masks[:, 0] = 1
    masks[0, 2, 1, 1] = 2
    masks[1, 3, 0, 0] = 0.6
    masks[1, 0, 0, 0] = 0.4
    assert present_channels(masks).tolist() == [[True, False, True, False], [True, False, False, True]]


def test_memorize_every_must_be_positive(network):
    with pytest.raises(ValueError, match='memorize_every'):
        InferenceCore(network, [1], memorize_every=0)


@torch.no_grad()
def test_preallocated_memory_gives_the_same_result(network):
    """The fast path's static memory bank (CPU: no CUDA graph) equals the list bank, including a
    growth of its buffers and an object appearing mid-clip."""
    frames, masks, flow = clip(9, seed=3)
    first = only_object_1(masks)
    new = {4: masks.clone()}
    results = []
    for fast in (False, True):
        core = InferenceCore(network, [2], memorize_every=2, regional_read=True, fast=fast, expected_frames=2)
        outputs, _, kept = run(core, frames, first, flow, new)
        results.append((outputs, kept))
    assert results[0][1] == results[1][1]
    assert core.memory.capacity > core.memory.capacity_hint      # the buffers grew
    for a, b in zip(results[0][0], results[1][0]):
        assert torch.allclose(a, b, atol=1e-6)

