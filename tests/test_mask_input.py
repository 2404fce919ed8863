"""utils.mask_input: palette, greyscale and antialiased colour masks as object ids."""
import argparse
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import DAVIS_TRAIN, DAVIS_TRAIN_HW
from utils.io import PALETTE, read_mask, write_palette_mask
from utils.mask_input import MaskError, parse_mask_spec, read_first_mask, read_given_masks

SIZE = (120, 160)


def draw_objects(line_type: int, colours: list) -> np.ndarray:
    """Two overlapping discs and a rotated box on black, as RGB."""
    image = np.zeros(SIZE + (3,), np.uint8)
    shapes = [lambda c: cv2.circle(image, (45, 50), 30, c, -1, line_type),
              lambda c: cv2.circle(image, (80, 60), 22, c, -1, line_type),
              lambda c: cv2.fillConvexPoly(image, np.array([[110, 70], [150, 80], [140, 115], [105, 105]]),
                                           c, line_type)]
    for draw, colour in zip(shapes, colours):
        draw(tuple(int(v) for v in colour))
    return image


def save_rgb(path, rgb: np.ndarray) -> str:
    Image.fromarray(rgb).save(path)
    return str(path)


def test_davis_palette_mask_keeps_its_ids():
    path = os.path.join(DAVIS_TRAIN, 'Annotations', '480p', 'bear', '00000.png')
    mask = read_first_mask(path, size=DAVIS_TRAIN_HW)
    assert (mask.n_objects, mask.labels) == (1, (1,))
    assert np.array_equal(mask.ids, read_mask(path))
    assert mask.colours.tolist() == [PALETTE[1].tolist()]


def test_palette_ids_3_and_7_are_renumbered_with_a_mapping(tmp_path):
    user = np.zeros(SIZE, np.uint8)
    user[10:40, 10:50], user[60:100, 80:150], user[0:5, 0:5] = 3, 7, 255
    write_palette_mask(str(tmp_path / 'm.png'), user)
    mask = read_first_mask(str(tmp_path / 'm.png'))
    assert (mask.n_objects, mask.labels) == (2, (3, 7))
    assert np.array_equal(mask.ids, np.select([user == 3, user == 7], [1, 2], 0))  # void read as background
    assert mask.colours.tolist() == [PALETTE[3].tolist(), PALETTE[7].tolist()]
    assert np.array_equal(np.asarray((0,) + mask.labels)[mask.ids], np.where(user == 255, 0, user))


def test_antialiased_greyscale_mask_is_one_object(tmp_path):
    grey = np.zeros(SIZE, np.uint8)
    cv2.circle(grey, (70, 60), 35, 255, -1, cv2.LINE_AA)
    assert len(np.unique(grey)) > 10  # the edge really is antialiased
    Image.fromarray(grey).save(tmp_path / 'grey.png')
    mask = read_first_mask(str(tmp_path / 'grey.png'))
    assert (mask.n_objects, mask.labels) == (1, (1,))
    assert np.array_equal(mask.ids, (grey > 127).astype(np.uint8))


def test_binary_and_small_value_id_maps(tmp_path):
    binary = np.zeros(SIZE, bool)
    binary[20:50, 30:90] = True
    Image.fromarray(binary).save(tmp_path / 'binary.png')
    mask = read_first_mask(str(tmp_path / 'binary.png'))
    assert mask.n_objects == 1 and np.array_equal(mask.ids, binary.astype(np.uint8))
    ids = np.zeros(SIZE, np.uint8)
    ids[:30], ids[60:] = 2, 5  # one channel, values < 128: an id map
    Image.fromarray(ids).save(tmp_path / 'ids.png')
    mask = read_first_mask(str(tmp_path / 'ids.png'))
    assert (mask.n_objects, mask.labels) == (2, (2, 5))


def test_antialiased_colour_mask_finds_each_colour(tmp_path):
    colours = [(255, 128, 0), (0, 200, 255), (200, 0, 200)]
    smooth = draw_objects(cv2.LINE_AA, colours)
    assert len(np.unique(smooth.reshape(-1, 3), axis=0)) > 50  # many blended edge colours
    mask = read_first_mask(save_rgb(tmp_path / 'colour.png', smooth))
    assert mask.n_objects == 3 and mask.labels == (1, 2, 3)
    assert mask.colours.tolist() == [list(c) for c in colours]  # numbered in raster order of appearance
    sharp = draw_objects(cv2.LINE_8, [(1, 1, 1), (2, 2, 2), (3, 3, 3)])[..., 0]
    edges = cv2.dilate(sharp, np.ones((3, 3), np.uint8)) != cv2.erode(sharp, np.ones((3, 3), np.uint8))
    assert not ((mask.ids != sharp) & ~edges).any()  # blended pixels go to a neighbouring object
    assert (mask.ids == sharp).mean() > 0.97


def test_jpeg_compressed_colour_mask(tmp_path):
    Image.fromarray(draw_objects(cv2.LINE_AA, [(255, 128, 0), (0, 200, 255), (200, 0, 200)])).save(
        tmp_path / 'colour.jpg', quality=50)
    mask = read_first_mask(str(tmp_path / 'colour.jpg'))
    assert mask.n_objects == 3  # compression noise does not make extra objects
    sharp = draw_objects(cv2.LINE_8, [(1, 1, 1), (2, 2, 2), (3, 3, 3)])[..., 0]
    assert (mask.ids == sharp).mean() > 0.97


def test_rgb_mask_in_davis_colours_keeps_palette_ids(tmp_path):
    smooth = draw_objects(cv2.LINE_AA, [PALETTE[4], PALETTE[1], PALETTE[2]])
    mask = read_first_mask(save_rgb(tmp_path / 'davis_rgb.png', smooth))
    assert (mask.n_objects, mask.labels) == (3, (1, 2, 4))
    assert mask.ids[50, 45] == 3 and mask.ids[60, 85] == 1 and mask.ids[90, 125] == 2


def test_resize_is_nearest_neighbour_and_size_mismatch_names_both(tmp_path):
    user = np.zeros((60, 80), np.uint8)
    user[10:30, 10:40], user[35:55, 45:75] = 1, 2
    write_palette_mask(str(tmp_path / 'm.png'), user)
    mismatch = r'm\.png: the mask is 60x80 \(HxW\) but the video frames are 120x160'
    with pytest.raises(MaskError, match=mismatch):
        read_first_mask(str(tmp_path / 'm.png'), size=SIZE)
    mask = read_first_mask(str(tmp_path / 'm.png'), size=SIZE, resize=True)
    assert mask.ids.shape == SIZE and set(np.unique(mask.ids)) == {0, 1, 2}
    assert np.array_equal(mask.ids[::2, ::2], user)


def test_unusable_masks(tmp_path):
    (tmp_path / 'text.png').write_text('not an image')
    with pytest.raises(MaskError, match=r'text\.png: unreadable mask image'):
        read_first_mask(str(tmp_path / 'text.png'))
    with pytest.raises(MaskError, match=r'missing\.png: mask file not found'):
        read_first_mask(str(tmp_path / 'missing.png'))
    write_palette_mask(str(tmp_path / 'blank.png'), np.zeros(SIZE, np.uint8))
    with pytest.raises(MaskError, match=r'blank\.png: the mask holds no object'):
        read_first_mask(str(tmp_path / 'blank.png'))
    many = np.repeat(np.arange(12, dtype=np.uint8), 10)[None].repeat(20, axis=0)
    write_palette_mask(str(tmp_path / 'many.png'), many)
    with pytest.raises(MaskError, match=r'many\.png: 11 objects found, at most 10'):
        read_first_mask(str(tmp_path / 'many.png'))
    assert read_first_mask(str(tmp_path / 'many.png'), max_objects=11).n_objects == 11
    photo = os.path.join(DAVIS_TRAIN, 'JPEGImages', '480p', 'bear', '00000.jpg')
    with pytest.raises(MaskError, match=r'of the pixels have one of its main colours'):
        read_first_mask(photo)
    squares = np.zeros(SIZE + (3,), np.uint8)
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]):
        squares[10:30, 10 + 35 * i:40 + 35 * i] = colour
    with pytest.raises(MaskError, match=r'squares\.png: more than 3 colours fill object-sized areas'):
        read_first_mask(save_rgb(tmp_path / 'squares.png', squares), max_objects=3)


def test_parse_mask_spec():
    assert parse_mask_spec('first.png') == (0, 'first.png')
    assert parse_mask_spec('12:later/00012.png') == (12, 'later/00012.png')
    assert parse_mask_spec('C:/masks/a.png') == (0, 'C:/masks/a.png')
    with pytest.raises(argparse.ArgumentTypeError, match='no file after the frame number'):
        parse_mask_spec('5:')


def test_masks_of_later_frames_share_one_numbering(tmp_path):
    first = np.zeros(SIZE, np.uint8)
    first[10:40, 10:40] = 4
    later = np.zeros(SIZE, np.uint8)
    later[10:40, 20:50], later[70:100, 100:140] = 4, 9
    write_palette_mask(str(tmp_path / 'a.png'), first)
    write_palette_mask(str(tmp_path / 'b.png'), later)
    given = read_given_masks([f'30:{tmp_path / "b.png"}', str(tmp_path / 'a.png')], size=SIZE)
    assert (given.n_objects, given.labels, given.first_frames) == (2, (4, 9), (0, 30))
    assert sorted(given.masks) == [0, 30]
    assert np.array_equal(given.masks[0], first)                      # the user's ids
    assert np.array_equal(given.masks[30], later)
    with pytest.raises(MaskError, match='frame 0 already has a mask'):
        read_given_masks([str(tmp_path / 'a.png'), f'0:{tmp_path / "b.png"}'])
    write_palette_mask(str(tmp_path / 'c.png'), np.where(later == 9, 9, 0).astype(np.uint8))
    with pytest.raises(MaskError, match=r'c\.png: brings the number of objects to 2, at most 1'):
        read_given_masks([str(tmp_path / 'a.png'), f'30:{tmp_path / "c.png"}'], max_objects=1)


def test_greyscale_ids_with_void_255_are_an_id_mask(tmp_path):
    ids = np.zeros(SIZE, np.uint8)
    ids[10:40, 10:60], ids[60:90, 80:140] = 1, 3
    ids[:, 70:72] = 255                                   # DAVIS void between the objects
    Image.fromarray(ids, mode='L').save(tmp_path / 'ids_void.png')
    mask = read_first_mask(str(tmp_path / 'ids_void.png'))
    assert (mask.n_objects, mask.labels) == (2, (1, 3))
    assert mask.ids[20, 20] == 1 and mask.ids[70, 100] == 2 and mask.ids[50, 71] == 0
    binary = np.where(ids == 1, 255, 0).astype(np.uint8)  # 0/255 alone stays one binary object
    Image.fromarray(binary, mode='L').save(tmp_path / 'binary.png')
    assert read_first_mask(str(tmp_path / 'binary.png')).n_objects == 1


def test_size_mismatch_names_the_option_that_resizes(tmp_path):
    write_palette_mask(str(tmp_path / 'm.png'), np.ones((60, 80), np.uint8))
    with pytest.raises(MaskError, match='--resize-mask'):
        read_first_mask(str(tmp_path / 'm.png'), size=SIZE)


@pytest.mark.parametrize('text, message', [('-1:a.png', 'frame numbers start at 0'),
                                           ('abc:a.png', "'abc' is not a frame number"),
                                           ('x:a.png', "'x' is not a frame number")])
def test_frame_numbers_that_are_not_numbers(tmp_path, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse_mask_spec(text)


def test_a_file_named_with_a_colon_is_still_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'abc:a.png').write_bytes(b'')
    assert parse_mask_spec('abc:a.png') == (0, 'abc:a.png')


def test_a_fifo_mask_is_refused(tmp_path, no_hang):
    os.mkfifo(tmp_path / 'pipe.png')
    with pytest.raises(MaskError, match='pipe.png: mask file is not a regular file'):
        read_first_mask(str(tmp_path / 'pipe.png'))


def test_a_later_binary_mask_never_takes_the_void_id(tmp_path):
    first = np.zeros(SIZE, np.uint8)
    first[10:40, 10:40] = 254
    later = np.zeros(SIZE, np.uint8)
    later[70:100, 100:140] = 255
    write_palette_mask(str(tmp_path / 'a.png'), first)
    cv2.imwrite(str(tmp_path / 'b.png'), later)
    given = read_given_masks([str(tmp_path / 'a.png'), f'5:{tmp_path / "b.png"}'], size=SIZE)
    assert given.labels == (254, 1)
    assert set(np.unique(given.masks[5])) == {0, 1}
