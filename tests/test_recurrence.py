"""The frame loop: which frames are kept in memory, objects that appear later, absent objects."""
import pytest
import torch

from config import cfg
from models.recurrence import ABSENT_LOGIT, FrameRecurrence
from models.rmnet import RMNet
from models.tiny_flownet import TinyFlowNet


@pytest.fixture(scope='module')
def network():
    torch.manual_seed(0)
    return RMNet(cfg).eval()


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
    read = core.memory.read

    def recording_read(*args):
        read_sizes.append(len(core.memory) + 1)
        return read(*args)

    core.memory.read = recording_read
    outputs = []
    for t in range(1, len(frames)):     # the fast path's step overwrites its output buffer
        outputs.append(core.step(frames[t], flow, (new_masks or {}).get(t)).clone())
        kept.append(len(core.memory))
    return outputs, read_sizes, kept


@torch.no_grad()
def test_memory_schedule_every_five_frames(network):
    frames, masks, flow = clip(12)
    core = FrameRecurrence(network, [2], memorize_every=5)
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
    core = FrameRecurrence(network, [2], memorize_every=5)
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
    core = FrameRecurrence(network, [2], memorize_every=5)
    outputs, _, _ = run(core, frames, only_one, flow)
    logits_floor = torch.softmax(torch.tensor([0.0, ABSENT_LOGIT]), 0)[1]
    assert all(out[0, 2].max() <= logits_floor for out in outputs)


@torch.no_grad()
def test_frames_where_objects_were_given_are_pinned(network):
    frames, masks, flow = clip(8)
    core = FrameRecurrence(network, [2], memorize_every=3)
    run(core, frames, only_object_1(masks), flow, new_masks={4: masks.clone()})
    assert core.memory.pinned == [True, False, True, False]     # kept: frames 0, 3, 4 (given), 6


@torch.no_grad()
def test_the_flow_network_computes_the_flow_of_frame_t_from_frames_t_and_t_minus_1(network):
    torch.manual_seed(1)
    flow_net = TinyFlowNet().eval()
    frames, masks, _ = clip(4)
    given = FrameRecurrence(network, [2], memorize_every=5)
    computed = FrameRecurrence(network, [2], memorize_every=5, flow_net=flow_net)
    given.start(frames[0], masks)
    computed.start(frames[0], masks)
    for t in range(1, 4):
        expected_flow = flow_net.step(frames[t], frames[t - 1])
        out = computed.step(frames[t])
        assert torch.equal(computed.flow, expected_flow)
        assert torch.equal(out, given.step(frames[t], expected_flow))
    with pytest.raises(ValueError, match='no flow'):
        given.step(frames[1])


def test_memorize_every_must_be_positive(network):
    with pytest.raises(ValueError, match='memorize_every'):
        FrameRecurrence(network, [1], memorize_every=0)


@torch.no_grad()
def test_preallocated_memory_gives_the_same_result(network):
    """The fast path's static memory bank (CPU: no CUDA graph) equals the list bank, including a
    growth of its buffers and an object appearing mid-clip."""
    frames, masks, flow = clip(9, seed=3)
    first = only_object_1(masks)
    new = {4: masks.clone()}
    results = []
    for fast in (False, True):
        core = FrameRecurrence(network, [2], memorize_every=2, regional_read=True, fast=fast, expected_frames=2)
        outputs, _, kept = run(core, frames, first, flow, new)
        results.append((outputs, kept))
    assert results[0][1] == results[1][1]
    assert core.memory.capacity > core.memory.capacity_hint      # the buffers grew
    for a, b in zip(results[0][0], results[1][0]):
        assert torch.allclose(a, b, atol=1e-6)



@torch.no_grad()
def test_a_second_video_reuses_the_fast_buffers_and_gives_a_fresh_result(network):
    first_video, second_video = clip(7, seed=4), clip(4, seed=5)
    reused = FrameRecurrence(network, [2], memorize_every=2, fast=True, expected_frames=2)
    run(reused, *first_video, new_masks={3: first_video[1].clone()})
    keys = reused.memory.keys
    outputs, _, kept = run(reused, *second_video)
    assert reused.memory.keys is keys                            # the same buffers
    fresh = FrameRecurrence(network, [2], memorize_every=2, fast=True, expected_frames=2)
    expected, _, expected_kept = run(fresh, *second_video)
    assert kept == expected_kept
    for a, b in zip(outputs, expected):
        assert torch.allclose(a, b, atol=1e-6)


@torch.no_grad()
def test_background_is_not_an_absent_object_when_frame_0_has_none(network):
    """An object covering all of frame 0: the background is still aggregated, not clamped to
    the absent logit, in the later frames."""
    frames, _, flow = clip(3)
    masks = torch.zeros(1, 4, 32, 48)
    masks[:, 1] = 1
    core = FrameRecurrence(network, [1], memorize_every=5)
    outputs, _, _ = run(core, frames, masks, flow)
    absent = torch.softmax(torch.tensor([ABSENT_LOGIT, 0.0]), dim=0)[0]
    assert (outputs[-1][:, 0] > 10 * absent).any()
