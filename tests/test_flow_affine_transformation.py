"""Flow update under affine warps: the C++ op equals the NumPy path; hand-checked cases."""
import numpy as np
import pytest

from extensions.flow_affine_transformation import (invert_affine, update_flow, update_flow_cpp,
                                                   update_flow_numpy)

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def random_flow(seed, height=37, width=53):
    return (np.random.default_rng(seed).normal(size=(height, width, 2)) * 3).astype(np.float32)


def test_identity_keeps_the_flow():
    flow = random_flow(0)
    assert np.array_equal(update_flow_numpy(flow, IDENTITY, IDENTITY, flow.shape[:2]), flow)


def test_translations_by_hand():
    flow = np.zeros((20, 30, 2), dtype=np.float32)
    flow[..., 0], flow[..., 1] = 2.0, -1.0
    # warped frame t shows original frame t shifted: new pixel p' is original p' + (3, 1)
    to_src = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 1.0]])
    # frame t-1 is shifted the other way: original q lands at q + (4, 0)
    prev_from_src = np.array([[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]])
    out = update_flow_numpy(flow, to_src, prev_from_src, (20, 30))
    inside = out[:19, :27]
    assert np.allclose(inside[..., 0], 3 + 2 + 4) and np.allclose(inside[..., 1], 1 - 1)
    assert np.all(out[:, 27:] == 0) and np.all(out[19:] == 0)   # sources outside the frame


def test_scaling_scales_the_flow():
    flow = random_flow(1)
    half = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])          # new pixel p' is original 2p'
    out = update_flow_numpy(flow, half, invert_affine(half), (18, 26))
    assert np.allclose(out, flow[0:36:2, 0:52:2] / 2, atol=1e-6)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_cpp_op_equals_numpy_path(seed):
    rng = np.random.default_rng(seed)
    flow = random_flow(seed, 41 + seed, 57)
    angle = rng.uniform(-0.3, 0.3)
    to_src = np.array([[np.cos(angle) * 1.1, -np.sin(angle), 5.5], [np.sin(angle), np.cos(angle) * 0.9, -3.2]])
    prev_from_src = invert_affine([[1.05, 0.1, -2.0], [-0.05, 0.97, 1.5]])
    expected = update_flow_numpy(flow, to_src, prev_from_src, (45, 60))
    assert np.array_equal(update_flow_cpp(flow, to_src, prev_from_src, (45, 60)), expected)
    assert np.array_equal(update_flow(flow, to_src, prev_from_src, (45, 60)), expected)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match='flow must be'):
        update_flow_numpy(np.zeros((4, 4)), IDENTITY, IDENTITY, (4, 4))
    with pytest.raises(ValueError, match='affine map'):
        update_flow_numpy(np.zeros((4, 4, 2)), np.eye(2), IDENTITY, (4, 4))
