"""Masks drawn over frames: each object tinted with its DAVIS palette colour and outlined."""
import cv2
import numpy as np

from utils.io import PALETTE

VOID_ID = 255


def overlay(frame_rgb: np.ndarray, ids: np.ndarray, alpha: float = 0.5, contour_width: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 RGB with object k blended with PALETTE[k] at `alpha` and outlined in it.

    The outline is the object's own border pixels, `contour_width` wide; background (0) and
    void (255) pixels keep the frame's colour.
    """
    frame = np.asarray(frame_rgb)
    ids = np.asarray(ids)
    if frame.ndim != 3 or frame.shape[2] != 3 or ids.shape != frame.shape[:2]:
        raise ValueError(f'overlay needs an (H, W, 3) frame and (H, W) ids, '
                         f'got {frame.shape} and {ids.shape}')
    if ids.dtype != np.uint8:
        if ids.min() < 0 or ids.max() > 255:
            raise ValueError(f'object ids must lie in 0..255, got {ids.min()}..{ids.max()}')
        ids = ids.astype(np.uint8)
    objects = (ids != 0) & (ids != VOID_ID)
    colours = PALETTE[ids].astype(np.float32)
    blended = frame.astype(np.float32) * (1.0 - alpha) + colours * alpha
    result = np.where(objects[..., None], np.clip(np.rint(blended), 0, 255), frame).astype(np.uint8)
    if contour_width > 0:
        kernel = np.ones((2 * contour_width + 1,) * 2, np.uint8)
        border = (cv2.dilate(ids, kernel, borderType=cv2.BORDER_REPLICATE) !=
                  cv2.erode(ids, kernel, borderType=cv2.BORDER_REPLICATE)) & objects
        result[border] = PALETTE[ids[border]]
    return result
