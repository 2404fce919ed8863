"""PreparedBranches: the branches of earlier videos kept by key, bounded in count and memory."""
import pytest

from core.prepared_branches import IDLE_MEMORY_BYTES, PreparedBranches


class Branch:
    """A branch whose recurrences hold 2 x `nbytes` of memory."""

    def __init__(self, nbytes: int = 0):
        self.nbytes = 2 * nbytes
        self.released = False

    def memory_bytes(self) -> int:
        return self.nbytes

    def release(self) -> None:
        self.released = True


def build(built, key, nbytes=0):
    def make():
        built.append(key)
        return [Branch(nbytes)]
    return make


def test_kept_branches_are_reused_and_the_least_recent_go_first():
    prepared, built = PreparedBranches(max_kept=2), []
    a = prepared.get('a', build(built, 'a'))
    b = prepared.get('b', build(built, 'b'))
    assert prepared.get('a', build(built, 'a')) is a           # a is now the most recent
    prepared.get('c', build(built, 'c'))                         # b goes, its memory freed
    assert built == ['a', 'b', 'c'] and list(prepared.kept) == ['a', 'c']
    assert b[0].released and not a[0].released
    prepared.get('b', build(built, 'b'))
    assert built[-1] == 'b' and list(prepared.kept) == ['c', 'b']
    kept = [branch for branches in prepared.kept.values() for branch in branches]
    prepared.clear()
    assert len(prepared) == 0 and all(branch.released for branch in kept)


def test_idle_branches_are_bounded_in_memory():
    prepared, built = PreparedBranches(max_kept=8), []
    large = IDLE_MEMORY_BYTES // 3            # both recurrences: two thirds of the bound
    prepared.get('long', build(built, 'long', large))
    prepared.get('short', build(built, 'short', 1))
    prepared.trim()
    assert list(prepared.kept) == ['long', 'short']            # idle: within the bound
    prepared.get('longer', build(built, 'longer', large))
    prepared.trim()
    assert list(prepared.kept) == ['long', 'short', 'longer']  # the current video is never idle
    prepared.get('next', build(built, 'next', 1))
    assert list(prepared.kept) == ['short', 'longer', 'next']  # idle long + longer passed the bound


def test_one_kept_means_a_new_key_replaces_the_last():
    prepared, built = PreparedBranches(max_kept=1), []
    prepared.get('a', build(built, 'a'))
    prepared.get('b', build(built, 'b'))
    prepared.get('a', build(built, 'a'))
    assert built == ['a', 'b', 'a'] and len(prepared) == 1
    with pytest.raises(ValueError):
        PreparedBranches(max_kept=0)


def test_an_evicted_fast_recurrence_frees_its_memory_without_the_collector():
    """The fast path's step is held by its GraphedStep, a reference cycle: eviction must free
    the memory itself, not leave it to a later garbage collection."""
    import gc
    import weakref

    import torch

    from config import cfg
    from core.augmentation import ScaleBranch
    from models.recurrence import FrameRecurrence
    from models.rmnet import RMNet
    from models.tiny_flownet import TinyFlowNet

    torch.manual_seed(0)
    network, flow_net = RMNet(cfg).eval(), TinyFlowNet(cfg).eval()
    frame = torch.rand(1, 3, 48, 80)
    masks = torch.zeros(1, 2, 48, 80)
    masks[:, 1, 12:36, 20:60] = 1
    masks[:, 0] = 1 - masks[:, 1]

    def build():
        recurrence = FrameRecurrence(network, [1], 1, fast=True, expected_frames=3, flow_net=flow_net)
        return [ScaleBranch(1.0, recurrence, None, (48, 80))]

    prepared = PreparedBranches(max_kept=1)
    gc.disable()
    try:
        with torch.no_grad():
            branch = prepared.get('one', build)[0]
            branch.start(frame, masks)
            branch.step(frame, None)
        memory = branch.recurrence.memory
        assert branch.memory_bytes() == memory.keys.nbytes + memory.values.nbytes + sum(
            buffer.nbytes for buffer in (memory.slot_count, memory.slot_sum, memory.slot_age)) > 0
        keys = weakref.ref(memory.keys)
        del memory
        del branch
        prepared.get('two', build)
        assert keys() is None
    finally:
        gc.enable()
