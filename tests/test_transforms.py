"""Training augmentations: frames, masks and flows stay aligned; ids, one-hot, order, seeds."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from easydict import EasyDict as edict

from config import cfg as default_cfg
from conftest import DAVIS_TRAIN
from datasets.transforms import (Brightness, Compose, RandomAffine, RandomChannelPermutation, RandomCrop,
                                 ReorganizeObjectIds, Resize, ToOneHot, affine_about_centre, blank_flows,
                                 build_transforms, normalise_frames, sample_rng)
from utils.io import read_frame

IGNORE = 255
WHITE = (255, 255, 255)


def smooth_texture(rng, height, width):
    """Blurred noise stretched to 0..255: smooth enough for bilinear sampling to be accurate."""
    import cv2
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 3)
    noise -= noise.min(axis=(0, 1))
    return (noise / noise.max(axis=(0, 1)) * 255).astype(np.uint8)


def shifted_clip(shift=(3, -2), size=(96, 128), n_frames=3, seed=0):
    """Frame t shows frame t-1 moved by `shift` (dx, dy); its exact backward flow is -shift."""
    rng = np.random.default_rng(seed)
    height, width = size
    margin = 10 * n_frames
    base = smooth_texture(rng, height + 2 * margin, width + 2 * margin)
    labels = np.zeros(base.shape[:2], dtype=np.uint8)
    yy, xx = np.mgrid[:labels.shape[0], :labels.shape[1]]
    labels[((yy - 60) / 25) ** 2 + ((xx - 70) / 30) ** 2 < 1] = 4
    labels[((yy - 80) / 20) ** 2 + ((xx - 130) / 15) ** 2 < 1] = 9
    dx, dy = shift
    frames, masks = [], []
    for t in range(n_frames):
        top, left = margin - t * dy, margin - t * dx
        frames.append(base[top:top + height, left:left + width].copy())
        masks.append(labels[top:top + height, left:left + width].copy())
    flows = blank_flows(frames)
    for flow in flows[1:]:
        flow[...] = (-dx, -dy)
    return {'frames': frames, 'masks': masks, 'flows': flows}


def backward_warp(image, flow, mode='bilinear'):
    """Sample `image` (H, W[, C]) at p + flow(p); also whether p + flow(p) lies in the image."""
    height, width = flow.shape[:2]
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    x, y = xx + flow[..., 0], yy + flow[..., 1]
    grid = torch.from_numpy(np.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], -1))[None]
    source = torch.from_numpy(np.atleast_3d(image).astype(np.float32)).permute(2, 0, 1)[None]
    warped = F.grid_sample(source, grid, mode=mode, align_corners=True)[0].permute(1, 2, 0).numpy()
    inside = (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return warped.squeeze(-1) if image.ndim == 2 else warped, inside


def alignment_errors(clip, t):
    """Frame error (mean abs, grey levels) and mask disagreement (fraction) between frame t and
    frame t-1 warped by flow t, over pixels that are real image content in both frames."""
    frames, masks, flow = clip['frames'], clip['masks'], clip['flows'][t]
    warped, inside = backward_warp(frames[t - 1].astype(np.float32), flow)
    near_fill, _ = backward_warp((masks[t - 1] == IGNORE).astype(np.float32), flow)
    valid = inside & (masks[t] != IGNORE) & (near_fill == 0)
    assert valid.mean() > 0.3, 'too few comparable pixels for a meaningful check'
    frame_error = np.abs(warped - frames[t].astype(np.float32))[valid].mean()
    warped_mask, _ = backward_warp(masks[t - 1], flow, mode='nearest')
    interior = valid & ~object_boundaries(masks[t])    # nearest resampling may move an edge by 1
    mask_error = (warped_mask[interior] != masks[t][interior]).mean()
    return frame_error, mask_error


def object_boundaries(mask):
    """Pixels with a different label within one pixel."""
    import cv2
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)


def assert_aligned(clip, max_frame_error=2.0):
    for t in range(1, len(clip['frames'])):
        frame_error, mask_error = alignment_errors(clip, t)
        assert frame_error < max_frame_error, \
            f'frame {t}: the warped previous frame differs by {frame_error:.2f}'
        assert mask_error < 0.002, f'frame {t}: {mask_error:.2%} of mask pixels disagree'


def test_the_check_detects_small_misalignments():
    clip = shifted_clip()
    assert_aligned(clip)
    one_pixel = {**clip, 'flows': [flow + np.float32(1) for flow in clip['flows']]}
    assert alignment_errors(one_pixel, 1)[0] > 4.0
    two_pixels = {**clip, 'flows': [flow + np.float32(2) for flow in clip['flows']]}
    assert alignment_errors(two_pixels, 1)[1] > 0.005


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_affine_keeps_frames_masks_and_flows_aligned(seed):
    affine = RandomAffine(degrees=20, scale=(0.9, 1.3), shear=10, frame_fill=WHITE,
                          mask_fill=IGNORE)
    out = affine(shifted_clip(seed=seed), np.random.default_rng(seed))
    fill = np.concatenate([f[m == IGNORE] for f, m in zip(out['frames'], out['masks'])])
    assert len(fill) and np.median(fill) == 255                    # fill: white, ignore label
    assert_aligned(out)


def test_static_clip_flows_describe_the_affine_motion():
    clip = shifted_clip(shift=(0, 0))
    affine = RandomAffine(degrees=20, scale=(0.9, 1.1), shear=10, frame_fill=WHITE,
                          mask_fill=IGNORE)
    out = affine(clip, np.random.default_rng(5))
    assert np.abs(out['flows'][0]).max() < 1e-6                     # frame 0 has no motion
    assert np.abs(out['flows'][1]).max() > 3                        # the affines moved pixels
    assert_aligned(out)


def test_resize_scales_flows_and_keeps_alignment():
    clip = shifted_clip(shift=(4, -4), size=(120, 160))
    out = Resize(60, keep_ratio=True)(clip, np.random.default_rng(0))
    assert out['frames'][0].shape == (60, 80, 3) and out['masks'][0].shape == (60, 80)
    assert np.allclose(out['flows'][1], (-2.0, 2.0))
    assert_aligned(out)
    upscaled = Resize(200, keep_ratio=True)(clip, np.random.default_rng(0))
    assert upscaled['flows'][2].shape == (200, 267, 2)
    assert_aligned(upscaled)


def test_resize_without_ratio_scales_each_axis():
    out = Resize(64, keep_ratio=False)(shifted_clip(shift=(4, -4), size=(96, 128)), None)
    assert out['masks'][1].shape == (64, 64)
    assert np.allclose(out['flows'][1], (-4 * 64 / 128, 4 * 64 / 96))


def test_crop_contains_the_first_frame_objects_and_keeps_alignment():
    clip = shifted_clip(size=(120, 160))
    crop = RandomCrop(110, WHITE, IGNORE)
    for seed in range(10):
        out = crop(clip, np.random.default_rng(seed))
        assert out['frames'][0].shape == (110, 110, 3) and out['flows'][1].shape == (110, 110, 2)
        for object_id in (4, 9):
            assert (out['masks'][0] == object_id).sum() == (clip['masks'][0] == object_id).sum()
        assert np.allclose(out['flows'][1], clip['flows'][1][0, 0])
        assert_aligned(out)


def test_crop_windows_vary_and_lie_inside_a_large_object():
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[10:90, 20:95] = 1
    clip = {'frames': [np.zeros((100, 100, 3), np.uint8)], 'masks': [mask],
            'flows': blank_flows([mask])}
    crop = RandomCrop(40, WHITE, IGNORE)
    corners = {crop.window(mask, np.random.default_rng(seed)) for seed in range(30)}
    assert len(corners) > 5
    assert all(10 <= y <= 50 and 20 <= x <= 55 for y, x in corners)
    assert np.all(crop(clip, np.random.default_rng(0))['masks'][0] == 1)


def test_crop_pads_small_images_with_fill_and_ignore():
    clip = shifted_clip(size=(40, 50))
    out = RandomCrop(64, WHITE, IGNORE)(clip, np.random.default_rng(0))
    assert out['frames'][1].shape == (64, 64, 3)
    assert np.all(out['masks'][1][:12] == IGNORE) and np.all(out['frames'][1][:12] == 255)
    assert np.all(out['flows'][1][:12] == 0)
    assert np.array_equal(out['masks'][1][12:52, 7:57], clip['masks'][1])
    assert_aligned(out)


def test_full_geometric_chain_keeps_alignment():
    clip = shifted_clip(shift=(5, 3), size=(120, 180), seed=3)
    chain = Compose([Resize(100), RandomAffine(15, (1.0, 1.3), 10, WHITE, IGNORE),
                     RandomCrop(90, WHITE, IGNORE)])
    for seed in range(3):
        assert_aligned(chain(clip, np.random.default_rng(seed)))


def test_reorganize_ids_keeps_first_frame_objects_and_ignore():
    first = np.array([[0, 7, 3, 255]], dtype=np.uint8)
    later = np.array([[9, 7, 3, 255]], dtype=np.uint8)
    clip = {'frames': [None, None], 'masks': [first, later], 'flows': [None, None]}
    out = ReorganizeObjectIds(IGNORE)(clip, None)
    assert out['masks'][0].tolist() == [[0, 2, 1, 255]]
    assert out['masks'][1].tolist() == [[0, 2, 1, 255]]      # id 9 is not in frame 0: background


def test_one_hot_keeps_at_most_n_objects_on_leading_channels():
    mask = np.array([[0, 1, 2, 3, 4, 5, 255]], dtype=np.uint8)
    clip = {'masks': [mask, mask.copy()]}
    seen = set()
    for seed in range(20):
        out = ToOneHot(3, IGNORE)(clip, np.random.default_rng(seed))
        labels, one_hot = out['labels'][1], out['masks'][1]
        assert out['n_objects'] == 3 and one_hot.shape == (4, 1, 7)
        assert sorted(labels[0, :6].tolist()) == [0, 0, 0, 1, 2, 3] and labels[0, 6] == IGNORE
        assert np.array_equal(one_hot.argmax(axis=0)[0, :6], labels[0, :6])
        assert one_hot[:, 0, 6].sum() == 0                         # ignored: no channel at all
        assert np.array_equal(out['labels'][0], labels)            # same choice for every frame
        seen.add(tuple(labels[0, 1:6].tolist()))
    assert len(seen) > 5                                           # objects chosen and shuffled


def test_one_hot_with_fewer_objects_than_the_maximum():
    mask = np.array([[0, 1, 1, 2]], dtype=np.uint8)
    out = ToOneHot(3, IGNORE)({'masks': [mask]}, np.random.default_rng(0))
    assert out['n_objects'] == 2 and out['masks'][0][3].sum() == 0
    assert sorted(out['labels'][0][0].tolist()) == [0, 1, 1, 2]


def test_photometric_transforms_draw_their_parameters_and_permute_the_bytes():
    frame = np.full((2, 2, 3), 100, dtype=np.uint8)
    frame[..., 1] = 200
    clip = {'frames': [frame, frame]}
    bright = Brightness((1.1, 1.3))(clip, np.random.default_rng(0))
    assert bright['frames'] is clip['frames'] and 1.1 <= bright['brightness'] <= 1.3
    orders = set()
    for seed in range(10):
        out = RandomChannelPermutation()(clip, np.random.default_rng(seed))
        assert np.array_equal(out['frames'][0], out['frames'][1]) and out['frames'][0].dtype == np.uint8
        assert np.array_equal(out['frames'][0], frame[..., out['channel_order']])
        orders.add(tuple(out['frames'][0][0, 0].tolist()))
    assert orders == {(100, 200, 100), (200, 100, 100), (100, 100, 200)}


def host_photometry(frame, factor, order, mean, std):
    """The published host order on one (H, W, 3) uint8 frame, in numpy float32: brightness
    (clipped), normalisation, then the channel permutation."""
    bright = np.clip(frame.astype(np.float32) * factor, 0, 255)
    normal = (bright / 255.0 - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return normal[..., order]


def photometry_cases(device):
    """Two clips of 2 real frames (clipped by a bright factor) with their drawn parameters."""
    frames = np.stack([read_frame(f'{DAVIS_TRAIN}/JPEGImages/480p/bear/{t:05d}.jpg')[::2, ::2] for t in (0, 1)])
    rng = np.random.default_rng(3)
    factors, orders = [rng.uniform(0.5, 1.5), 1.45], [rng.permutation(3), np.array([2, 0, 1])]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = np.stack([[host_photometry(f, factor, order, mean, std) for f in frames]
                         for factor, order in zip(factors, orders)])
    permuted = np.stack([[f[..., order] for f in frames] for order in orders])
    batch = torch.from_numpy(permuted).permute(0, 1, 4, 2, 3).contiguous().to(device)
    got = normalise_frames(batch, torch.tensor(factors, dtype=torch.float32), torch.from_numpy(np.stack(orders)),
                           torch.tensor(mean, device=device), torch.tensor(std, device=device))
    return got.permute(0, 1, 3, 4, 2).cpu().numpy(), expected


def test_normalise_frames_equals_the_host_order_bit_for_bit():
    got, expected = photometry_cases(torch.device('cpu'))
    assert got.dtype == np.float32 and (expected.max() > 2.0 and expected.min() < -1.5)
    assert np.array_equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_normalise_frames_on_the_gpu_equals_the_host_order_bit_for_bit():
    got, expected = photometry_cases(torch.device('cuda'))
    assert np.array_equal(got, expected)


def small_cfg():
    cfg = edict(default_cfg)
    cfg.TRAIN.AUGMENTATION.RESIZE_SIZE = 80
    cfg.TRAIN.AUGMENTATION.CROP_SIZE = 72
    return cfg


def test_build_transforms_order_and_parameters_per_stage():
    cfg = small_cfg()
    names = ['Resize', 'RandomAffine', 'RandomCrop', 'ReorganizeObjectIds', 'ToOneHot',
             'Brightness', 'RandomChannelPermutation', 'ToTensor']
    image, video = build_transforms(cfg, 'image'), build_transforms(cfg, 'video')
    assert [type(t).__name__ for t in image.transforms] == names
    assert [type(t).__name__ for t in video.transforms] == names
    aug = cfg.TRAIN.AUGMENTATION
    for stage, affine in (('IMAGE', image.transforms[1]), ('VIDEO', video.transforms[1])):
        assert (affine.degrees, affine.scale, affine.shear) == (
            aug[f'AFFINE_{stage}_DEGREES'], tuple(aug[f'AFFINE_{stage}_SCALE']),
            aug[f'AFFINE_{stage}_SHEARS'])
    with pytest.raises(ValueError, match='stage'):
        build_transforms(cfg, 'test')


def test_pipeline_output_shapes_and_seeded_determinism():
    cfg = small_cfg()
    transform = build_transforms(cfg, 'video')
    clip = shifted_clip(size=(96, 128))
    out = transform(clip, sample_rng(0, 1, 2))
    k = cfg.TRAIN.N_MAX_OBJECTS + 1
    assert out['frames'].shape == (3, 3, 72, 72) and out['frames'].dtype == torch.uint8
    assert out['brightness'].dtype == torch.float32 and sorted(out['channel_order'].tolist()) == [0, 1, 2]
    assert out['masks'].shape == (3, k, 72, 72) and out['labels'].shape == (3, 72, 72)
    assert out['labels'].dtype == out['masks'].dtype == torch.uint8 and out['flows'].shape == (3, 2, 72, 72)
    valid = out['labels'] != cfg.CONST.IGNORE_IDX         # the one-hot masks of the labels, void all zero
    assert torch.equal(out['masks'].argmax(1)[valid], out['labels'][valid].long())
    assert torch.equal(out['masks'].sum(1), valid.to(torch.uint8))
    assert out['n_objects'] == 2
    again = transform(clip, sample_rng(0, 1, 2))
    other = transform(clip, sample_rng(0, 1, 3))
    for key in ('frames', 'masks', 'labels', 'flows', 'brightness', 'channel_order'):
        assert torch.equal(out[key], again[key])
    assert not torch.equal(out['frames'], other['frames'])
    assert out['labels'].eq(IGNORE).any()                           # fill pixels stay ignored


def test_affine_about_centre_fixes_the_centre():
    matrix = affine_about_centre(11, 21, degrees=30, scale=1.2, shear=10)
    assert np.allclose(matrix @ np.array([10.0, 5.0, 1.0]), (10.0, 5.0))
