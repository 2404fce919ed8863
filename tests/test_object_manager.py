"""The object manager: user ids <-> channels, objects that appear later, the void id."""
import numpy as np
import pytest
import torch

from models.object_manager import NoNewObject, ObjectManager, SegmentationError, present_channels


def first_mask():
    mask = np.zeros((6, 8), np.uint8)
    mask[0:2, 0:2] = 4
    mask[3:5, 3:6] = 9
    mask[5, 7] = 200                          # the void id of these tests
    return mask


def manager(max_objects=5):
    return ObjectManager(first_mask(), void_id=200, max_objects=max_objects)


def test_ids_take_channels_in_order_and_void_is_background():
    objects = manager()
    assert objects.ids == [4, 9]
    lookup = objects.channel_lookup()
    assert lookup[[0, 4, 9, 200]].tolist() == [0, 1, 2, 0]
    assert objects.channel_ids(4).tolist() == [0, 4, 9, 0]


later = np.zeros((6, 8), np.uint8)
later[2:4, 6:8] = 1


@pytest.mark.parametrize('mask, object_id, expected', [
    (later.astype(bool), 3, 3),                # bool with an id
    (later, 3, 3),                             # 0/1 with an id
    (later * 255, 3, 3),                       # 0/255 with an id
    (later.astype(bool), None, 10),            # bool: one above every known id
    (later * 7, None, 7),                      # an id mask: its new id
    (later, None, 1),                          # 0/1 without an id: an id mask of id 1
])
def test_a_later_object_is_added(mask, object_id, expected):
    objects = manager()
    assert objects.add(3, mask, object_id) == [expected]
    assert objects.ids == sorted([4, 9, expected])
    assert objects.first_frames[expected] == 3
    assert np.array_equal(objects.given[3], np.where(later > 0, expected, 0))


def test_an_id_mask_adds_only_its_new_ids():
    objects = manager()
    mask = first_mask()
    mask[2:4, 6:8] = 5
    assert objects.add(2, mask) == [5]
    assert set(np.unique(objects.given[2]).tolist()) == {0, 5}


@pytest.mark.parametrize('mask, object_id, error, message', [
    (np.where(first_mask() == 4, 4, 0), None, NoNewObject, r'id\(s\) 4 are already known'),
    (np.zeros((6, 8), np.uint8), 3, NoNewObject, 'binary mask is empty'),
    (first_mask(), 3, SegmentationError, 'object_id is for a binary mask'),
    (later, 4, SegmentationError, 'object 4 already exists'),
    (later, 200, SegmentationError, 'differ from the void id'),
    (later[:3], 3, SegmentationError, 'differs from the first mask'),
])
def test_a_mask_that_adds_nothing_says_why(mask, object_id, error, message):
    objects = manager()
    with pytest.raises(error, match=message):
        objects.add(1, mask, object_id)


def test_bad_first_masks_and_too_many_objects():
    with pytest.raises(SegmentationError, match='no object'):
        ObjectManager(np.full((4, 4), 200, np.uint8), void_id=200, max_objects=3)
    with pytest.raises(SegmentationError, match='2 objects, but TEST.N_MAX_OBJECTS is 1'):
        ObjectManager(first_mask(), void_id=200, max_objects=1)
    objects = manager(max_objects=2)
    with pytest.raises(SegmentationError, match='number of objects to 3, but TEST.N_MAX_OBJECTS is 2'):
        objects.add(1, later, 3)
    assert objects.ids == [4, 9] and not objects.given        # nothing half-added
    with pytest.raises(SegmentationError, match='frames after the first'):
        objects.add(0, later, 3)


def test_present_channels():
    masks = torch.zeros(2, 4, 5, 5)
    masks[:, 0] = 1
    masks[0, 2, 1, 1] = 2
    masks[1, 3, 0, 0] = 0.6
    masks[1, 0, 0, 0] = 0.4
    assert present_channels(masks).tolist() == [[True, False, True, False], [True, False, False, True]]


def test_object_index_lists_batch_item_and_channel_of_every_object():
    from models.object_manager import ObjectIndex
    index = ObjectIndex.from_counts([2, 0, 3], torch.device('cpu'))
    assert index.batch.tolist() == [0, 0, 2, 2, 2]
    assert index.channel.tolist() == [1, 2, 1, 2, 3]
    assert index.counts == [2, 0, 3] and index.counts_tensor.tolist() == [2, 0, 3]
    assert len(index) == 5
    assert index.channel_in_use(4).tolist() == [[True, True, True, False], [True, False, False, False],
                                                [True, True, True, True]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_object_index_reaches_the_gpu_without_waiting_for_it():
    from models.object_manager import ObjectIndex
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        index = ObjectIndex.from_counts([1, 2], torch.device('cuda'))
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert index.batch.tolist() == [0, 1, 1] and index.channel.tolist() == [1, 1, 2]
