"""Writing results: one writer of a video's masks and overlays for every job, and the zip.

`VideoResults` writes, for the frames it is given, palette PNG masks (the ids as segmented)
and optionally overlays (PNG frames beside the masks, or one MP4 video) and 0/255 masks per
object. Every file is written atomically (utils.io); an overlay video that received no
frame is discarded, one that received some is closed, also when the job fails midway, so
the masks and the overlay written so far are kept. An overlay video that cannot be written
(full disk) is removed, never left broken under its name, and raises a WriteError naming it.
"""
import os
import zipfile
from typing import Any, List, Optional, Sequence

import numpy as np

from utils.io import DataError, WriteError, write_image, write_palette_mask
from utils.video_io import VideoWriter
from utils.visualization import overlay


class VideoResults:
    """The result files of one video.

    mask_dir: where <name>.png masks go; names: the file stem of every frame (None: %05d);
    frames: the frame indexes whose files are written (None: all); overlay_dir: overlay PNGs
    of those frames; overlay_video: an MP4 of the overlays of every frame; binary_dir and
    object_ids: <binary_dir>/<id>/<name>.png 0/255 masks of each object.
    """

    def __init__(self, mask_dir: str, names: Optional[Sequence[str]] = None,
                 frames: Optional[Sequence[int]] = None, overlay_dir: Optional[str] = None,
                 overlay_video: Optional[VideoWriter] = None, binary_dir: Optional[str] = None,
                 object_ids: Sequence[int] = ()):
        self.mask_dir = mask_dir
        self.names = names
        self.frames = None if frames is None else set(frames)
        self.overlay_dir = overlay_dir
        self.overlay_video = overlay_video
        self.binary_dir = binary_dir
        self.object_ids = list(object_ids)
        self.mask_paths: List[str] = []
        self.n_frames = 0

    def name(self, t: int) -> str:
        return f'{t:05d}' if self.names is None else self.names[t]

    def write(self, t: int, frame: np.ndarray, ids: np.ndarray) -> None:
        """Frame t and its ids; files are written if t is one of the frames to write."""
        self.n_frames = t + 1
        if self.overlay_video is not None:
            try:
                self.overlay_video.write(overlay(frame, ids))
            except OSError as e:
                self._drop_overlay()
                raise WriteError(f'{self.overlay_video.path}: cannot be written ({e.strerror or e}); '
                                 f'the partial overlay was removed') from e
        if self.frames is not None and t not in self.frames:
            return
        name = self.name(t)
        path = os.path.join(self.mask_dir, f'{name}.png')
        write_palette_mask(path, ids)
        self.mask_paths.append(path)
        if self.overlay_dir is not None:
            write_image(os.path.join(self.overlay_dir, f'{name}.png'), overlay(frame, ids))
        if self.binary_dir is not None:
            for object_id in self.object_ids:
                write_image(os.path.join(self.binary_dir, str(object_id), f'{name}.png'),
                            np.where(ids == object_id, 255, 0).astype(np.uint8))

    def __enter__(self) -> 'VideoResults':
        return self

    def _drop_overlay(self) -> None:
        self.overlay_video.discard()
        self.overlay_video.frames_written = 0

    def __exit__(self, *exc_info: Any) -> None:
        if self.overlay_video is None:
            return
        if not self.overlay_video.frames_written:
            self.overlay_video.discard()
            return
        try:
            self.overlay_video.close()
        except (DataError, OSError) as e:
            self._drop_overlay()
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise WriteError(f'{self.overlay_video.path}: cannot be written ({reason}); the partial '
                             f'overlay was removed') from e


def write_zip(path: str, root: str, members: Sequence[str]) -> None:
    """A stored (uncompressed) zip of `members`, paths relative to `root`, '/' separated."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        for member in sorted(members):
            archive.write(os.path.join(root, member), member.replace(os.sep, '/'))
