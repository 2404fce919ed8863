"""Regional attention maps: hand-computed boxes, and the CUDA kernel against the PyTorch path."""
import pytest
import torch

from extensions.reg_att_map_generator import (RegionalAttentionMapGenerator, cuda_kernel_available,
                                              regional_attention_map, regional_attention_map_torch)


def box_map(height, width, x0, x1, y0, y1):
    m = torch.zeros(height, width)
    m[y0:y1 + 1, x0:x1 + 1] = 1
    return m


def test_hand_computed_boxes():
    height, width = 200, 300
    mask = torch.zeros(1, 5, height, width)
    mask[0, 1, 100:110, 150:160] = 0.9          # interior: grown by 64 on every side
    mask[0, 2, 0:5, 290:300] = 0.5              # at the top-right border: clamped; 0.5 counts
    mask[0, 3, 50:52, 50:54] = 0.8              # 8 pixels (< 10): whole image
    mask[0, 4, 10:30, 10:30] = 0.49             # below the threshold: empty, whole image
    att, boxes = regional_attention_map_torch(mask)
    assert boxes.dtype == torch.int32
    assert boxes[0].tolist() == [[0, 0, 0, 0], [86, 223, 36, 173], [226, 299, 0, 68],
                                 [0, 299, 0, 199], [0, 299, 0, 199]]
    assert torch.equal(att[0, 0], torch.zeros(height, width))
    assert torch.equal(att[0, 1], box_map(height, width, 86, 223, 36, 173))
    assert torch.equal(att[0, 2], box_map(height, width, 226, 299, 0, 68))
    assert torch.equal(att[0, 3], torch.ones(height, width))
    assert torch.equal(att[0, 4], torch.ones(height, width))


def test_exactly_ten_pixels_make_a_box_and_parameters_are_honoured():
    mask = torch.zeros(1, 2, 100, 100)
    mask[0, 1, 40, 40:50] = 1.0                 # exactly 10 pixels in one row
    att, boxes = regional_attention_map_torch(mask, prob_threshold=0.5, min_pixels=10, margin=5)
    assert boxes[0, 1].tolist() == [35, 54, 35, 45]
    assert att[0, 1].sum() == 20 * 11
    _, boxes = regional_attention_map_torch(mask, min_pixels=11)
    assert boxes[0, 1].tolist() == [0, 99, 0, 99]


def test_batch_items_are_independent():
    mask = torch.zeros(2, 3, 64, 80)
    mask[0, 1, 5:15, 5:15] = 1
    mask[1, 2, 40:60, 60:70] = 1
    att, boxes = RegionalAttentionMapGenerator()(mask)
    for b in range(2):
        alone_att, alone_boxes = regional_attention_map(mask[b:b + 1])
        assert torch.equal(att[b:b + 1], alone_att) and torch.equal(boxes[b:b + 1], alone_boxes)
    assert boxes[0, 2].tolist() == [0, 79, 0, 63] and boxes[1, 1].tolist() == [0, 79, 0, 63]
    assert boxes[0, 1].tolist() == [0, 78, 0, 63]


def random_masks(generator, batch, channels, height, width):
    probs = torch.rand(batch, channels, height, width, generator=generator)
    blobs = torch.rand(batch, channels, height // 8 + 1, width // 8 + 1, generator=generator) > 0.93
    blobs = torch.nn.functional.interpolate(blobs.float(), size=(height, width), mode='nearest')
    return probs * blobs


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_cuda_kernel_equals_pytorch_path():
    assert cuda_kernel_available(), 'the CUDA kernel did not build'
    generator = torch.Generator().manual_seed(0)
    shapes = [(1, 2, 480, 854), (1, 11, 480, 864), (4, 4, 465, 465), (2, 9, 37, 53), (3, 1, 16, 16),
              (1, 3, 1, 1), (2, 6, 720, 1280)]
    for batch, channels, height, width in shapes:
        mask = random_masks(generator, batch, channels, height, width)
        ref_att, ref_boxes = regional_attention_map_torch(mask)
        att, boxes = regional_attention_map(mask.cuda())
        assert torch.equal(att.cpu(), ref_att), (batch, channels, height, width)
        assert torch.equal(boxes.cpu(), ref_boxes), (batch, channels, height, width)
    empty = torch.zeros(2, 5, 100, 120)
    assert torch.equal(regional_attention_map(empty.cuda())[1].cpu(), regional_attention_map_torch(empty)[1])
