"""Keeping a backward optical flow consistent when its two frames are warped by affine maps.

The flow of frame t says where each pixel of frame t was in frame t-1: p -> p + flow(p).
When frame t is warped by an affine map and frame t-1 by another (random affines, crops,
resizes in training), the new flow at a pixel p' of the warped frame t is

    p = A_t p'                      (A_t: warped frame t -> original frame t)
    q = p + flow(p)                 (bilinear sample of the old flow)
    new_flow(p') = B_prev q - p'    (B_prev: original frame t-1 -> warped frame t-1)

Pixels whose source p lies outside the original frame get a zero flow (their frame pixels are
fill colour and their mask is the ignore label). This is the intent of the published op; the
published one rounded positions to whole pixels and clamped them to the image, which moved
flows by up to half a pixel and broke them at the borders.

`update_flow` uses the C++ op when it is installed or builds on first use, else the NumPy
path `update_flow_numpy`; both compute the same float64 expressions and agree bit for bit.
"""
import os

import numpy as np

from extensions.build import load_extension

_HERE = os.path.dirname(os.path.abspath(__file__))
EXTENSION_NAME = 'rmnet_flow_affine_transformation'


def _as_affine(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape == (3, 3):
        matrix = matrix[:2]
    if matrix.shape != (2, 3):
        raise ValueError(f'an affine map must be 2x3 or 3x3, got shape {matrix.shape}')
    return matrix


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine map, as 2x3."""
    full = np.vstack([_as_affine(matrix), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _check_flow(flow: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f'a flow must be (H, W, 2), got shape {flow.shape}')
    return np.ascontiguousarray(flow, dtype=np.float32)


def update_flow_numpy(flow: np.ndarray, to_src: np.ndarray, prev_from_src: np.ndarray,
                      out_size: tuple) -> np.ndarray:
    """Vectorised NumPy path. `to_src`: warped frame t -> original frame t;
    `prev_from_src`: original frame t-1 -> warped frame t-1; `out_size`: (height, width)."""
    flow = _check_flow(flow)
    a, b = _as_affine(to_src), _as_affine(prev_from_src)
    height, width = flow.shape[:2]
    out_height, out_width = out_size
    y, x = np.meshgrid(np.arange(out_height, dtype=np.float64),
                       np.arange(out_width, dtype=np.float64), indexing='ij')
    px = a[0, 0] * x + a[0, 1] * y + a[0, 2]
    py = a[1, 0] * x + a[1, 1] * y + a[1, 2]
    valid = (px >= 0.0) & (px <= width - 1.0) & (py >= 0.0) & (py <= height - 1.0)
    fx = np.floor(np.where(valid, px, 0.0))
    fy = np.floor(np.where(valid, py, 0.0))
    x0, y0 = fx.astype(np.int64), fy.astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = px - fx, py - fy
    source = flow.astype(np.float64)
    top = (1.0 - wx)[..., None] * source[y0, x0] + wx[..., None] * source[y0, x1]
    bottom = (1.0 - wx)[..., None] * source[y1, x0] + wx[..., None] * source[y1, x1]
    value = (1.0 - wy)[..., None] * top + wy[..., None] * bottom
    qx, qy = px + value[..., 0], py + value[..., 1]
    nx = b[0, 0] * qx + b[0, 1] * qy + b[0, 2]
    ny = b[1, 0] * qx + b[1, 1] * qy + b[1, 2]
    out = np.stack([(nx - x).astype(np.float32), (ny - y).astype(np.float32)], axis=-1)
    out[~valid] = 0.0
    return out


def _module():
    return load_extension(EXTENSION_NAME, [os.path.join(_HERE, 'flow_affine_transformation.cpp')],
                          cuda=False)


def update_flow_cpp(flow: np.ndarray, to_src: np.ndarray, prev_from_src: np.ndarray,
                    out_size: tuple) -> np.ndarray:
    """The C++ op; raises RuntimeError when it cannot be built."""
    module = _module()
    if module is None:
        raise RuntimeError(f'{EXTENSION_NAME} is not available')
    flow = _check_flow(flow)
    out = np.empty((out_size[0], out_size[1], 2), dtype=np.float32)
    module.update_flow(flow, out, flow.shape[0], flow.shape[1], out_size[0], out_size[1],
                       tuple(_as_affine(to_src).ravel()), tuple(_as_affine(prev_from_src).ravel()))
    return out


def update_flow(flow: np.ndarray, to_src: np.ndarray, prev_from_src: np.ndarray,
                out_size: tuple) -> np.ndarray:
    """The new (out_h, out_w, 2) flow after warping frame t by `to_src`^-1 and frame t-1 by
    `prev_from_src` (see the module docstring)."""
    if _module() is not None:
        return update_flow_cpp(flow, to_src, prev_from_src, out_size)
    return update_flow_numpy(flow, to_src, prev_from_src, out_size)
