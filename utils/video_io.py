"""Frames of a user's video (a video file or a folder of images), a prefetching reader and an mp4 writer.

Frames are decoded lazily, one at a time, so host memory does not grow with the video length.
Every problem raises VideoIOError with a message that names the file.
"""
import logging
import os
import queue
import re
import stat
import threading
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from utils.io import DataError, file_mode, read_frame, temporary_path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
FOLDER_FPS = 24.0        # DAVIS frame rate, used for folders of frames unless told otherwise
FALLBACK_FPS = 25.0      # for video files whose header has no frame rate
MP4_CODEC = 'mp4v'
FALLBACK_CODEC = 'MJPG'  # written as .avi when mp4 cannot be opened


class VideoIOError(DataError):
    """A video or frame folder that cannot be read or written; the message names the file."""


def natural_key(name: str) -> Tuple[List[Any], str]:
    """Sort key where digit runs compare as numbers: frame2 before frame10."""
    parts = re.split(r'(\d+)', name)
    return [int(part) if index % 2 else part.lower() for index, part in enumerate(parts)], name


class FolderFrames:
    """The images of a folder, in natural order; all must have the same size."""

    length_is_exact = True

    def __init__(self, folder: str, fps: Optional[float] = None) -> None:
        self.path = folder
        names = [name for name in os.listdir(folder)
                 if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')]
        if not names:
            raise VideoIOError(f'{folder}: no frames in this folder '
                               f'(expected {"/".join(IMAGE_EXTENSIONS)} files)')
        self.files = [os.path.join(folder, name) for name in sorted(names, key=natural_key)]
        self.size: Tuple[int, int] = self._read(0).shape[:2]
        self.fps = float(fps or FOLDER_FPS)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> np.ndarray:
        try:
            return read_frame(self.files[index])
        except DataError as e:
            read = f'; the {index} frame(s) before it were read' if index else ''
            raise VideoIOError(f'{self.files[index]}: frame {index} cannot be decoded '
                               f'({e.__cause__ or e}){read}') from e

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, path in enumerate(self.files):
            frame = self._read(index)
            if frame.shape[:2] != self.size:
                raise VideoIOError(f'{path}: frame {index} is {frame.shape[0]}x{frame.shape[1]} (HxW) but '
                                   f'{os.path.basename(self.files[0])} is {self.size[0]}x{self.size[1]}; '
                                   f'all frames of a folder must have the same size')
            yield frame


class VideoFileFrames:
    """The frames of a video file decoded with cv2.VideoCapture, as RGB.

    len() is the frame count of the container header, which can be approximate (variable frame
    rate, damaged files): iteration yields what can actually be decoded.
    """

    length_is_exact = False

    def __init__(self, path: str, fps: Optional[float] = None) -> None:
        self.path = path
        capture = self._open()
        try:
            ok, frame = capture.read()
            if not ok or frame is None:
                raise VideoIOError(f'{path}: the video holds no decodable frame')
            self.size: Tuple[int, int] = frame.shape[:2]
            self._count = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
            header_fps = capture.get(cv2.CAP_PROP_FPS)
        finally:
            capture.release()
        if fps:
            self.fps = float(fps)
        elif header_fps and 0 < header_fps < 1000:
            self.fps = float(header_fps)
        else:
            logger.warning('%s: no frame rate in the header, using %.0f fps', path, FALLBACK_FPS)
            self.fps = FALLBACK_FPS

    def __len__(self) -> int:
        return self._count

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            capture.release()
            raise VideoIOError(f'{self.path}: cannot open this video (empty, truncated or an unsupported '
                               f'format; frame folders of {"/".join(IMAGE_EXTENSIONS)} files also work)')
        return capture

    def __iter__(self) -> Iterator[np.ndarray]:
        capture = self._open()
        index = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                if frame.shape[:2] != self.size:
                    raise VideoIOError(f'{self.path}: frame {index} is {frame.shape[0]}x{frame.shape[1]} '
                                       f'(HxW), earlier frames are {self.size[0]}x{self.size[1]}')
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                index += 1
        finally:
            capture.release()
        if index < self._count:
            logger.warning('%s: decoding stopped after %d frames, the header announced %d '
                           '(damaged file or inexact header)', self.path, index, self._count)


FrameSource = Union[FolderFrames, VideoFileFrames]


def open_frames(source: str, fps: Optional[float] = None) -> FrameSource:
    """A video file or a folder of frames as a lazy frame source.

    The result has len() (exact for folders, from the header for video files: check
    `length_is_exact`), `size` (H, W), `fps` (the header's, FOLDER_FPS for folders, or the `fps`
    given) and `path`; iterating it yields (H, W, 3) uint8 RGB frames, decoded one at a time.
    """
    source = os.fspath(source)
    if not os.path.exists(source):
        raise VideoIOError(f'{source}: no such video file or frame folder')
    if os.path.isdir(source):
        return FolderFrames(source, fps)
    if not stat.S_ISREG(os.stat(source).st_mode):
        raise VideoIOError(f'{source}: not a regular file (a pipe, socket or device); give a video file '
                           f'or a folder of frames')
    if source.lower().endswith(IMAGE_EXTENSIONS):
        raise VideoIOError(f'{source}: is a single image; give the folder that holds the frames, '
                           f'or a video file')
    return VideoFileFrames(source, fps)


class _Failure:
    """An exception raised by the producer thread, passed to the consumer in order."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class PrefetchReader:
    """Iterates `items` in a background thread, at most `depth` items ahead of the consumer.

    An exception raised while producing item i is re-raised by the consumer's next() after
    items 0..i-1 were delivered. len() is the wrapped source's. Use as a context manager, or call
    close(), to stop the thread when leaving early.
    """

    def __init__(self, items: Iterable[Any], depth: int = 4) -> None:
        self._source = items
        self._queue: 'queue.Queue[Any]' = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, name='frame-prefetch', daemon=True)
        self._thread.start()

    def __len__(self) -> int:
        return len(self._source)  # type: ignore[arg-type]

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failure(e))
            return
        self._put(_END)

    def __iter__(self) -> 'PrefetchReader':
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Failure):
            self._finished = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop the background thread and drop the frames it read ahead."""
        self._finished = True
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> 'PrefetchReader':
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _frame_count(path: str) -> int:
    """The frame count a video file's header announces (0 when it cannot be opened)."""
    capture = cv2.VideoCapture(path)
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if capture.isOpened() else 0
    finally:
        capture.release()


class VideoWriter:
    """Writes RGB frames to an mp4 (cv2 'mp4v'), or an MJPG .avi when mp4 cannot be opened.

    The size comes from `size` (H, W) or the first frame. Frames go to a hidden temporary file
    beside the target that close() renames into place; leaving the `with` block through an
    exception deletes it, so the final name never holds a partial video. `path` is the file
    written (its extension becomes .avi after a fallback).
    """

    def __init__(self, path: str, fps: float, size: Optional[Tuple[int, int]] = None) -> None:
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.size = tuple(size) if size is not None else None
        self.frames_written = 0
        self._writer: Optional[cv2.VideoWriter] = None
        self._temporary: Optional[str] = None
        if self.size is not None:
            self._open()

    def _try_codec(self, codec: str, path: str) -> bool:
        temporary = temporary_path(path)
        height, width = self.size
        writer = cv2.VideoWriter(temporary, cv2.VideoWriter_fourcc(*codec), self.fps, (width, height))
        if writer.isOpened():
            self._writer, self._temporary, self.path = writer, temporary, path
            return True
        writer.release()
        os.remove(temporary)
        return False

    def _open(self) -> None:
        if self._try_codec(MP4_CODEC, self.path):
            return
        fallback = os.path.splitext(self.path)[0] + '.avi'
        logger.warning('%s: cannot open an mp4 writer (codec %s); writing %s with %s instead',
                       self.path, MP4_CODEC, fallback, FALLBACK_CODEC)
        if not self._try_codec(FALLBACK_CODEC, fallback):
            raise VideoIOError(f'{self.path}: cannot open a video writer ({MP4_CODEC} .mp4 and '
                               f'{FALLBACK_CODEC} .avi both failed); is the folder writable?')

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        frame = np.asarray(frame_rgb)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f'{self.path}: frames must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}')
        if self.size is None:
            self.size = frame.shape[:2]
        if frame.shape[:2] != self.size:
            raise ValueError(f'{self.path}: frame {self.frames_written} is {frame.shape[0]}x{frame.shape[1]} '
                             f'(HxW), the video is {self.size[0]}x{self.size[1]}')
        if self._writer is None:
            self._open()
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it to its final name (with the umask's mode), once it reads
        back with every frame; otherwise (a full disk, a write error) drop it and raise
        VideoIOError."""
        if self._writer is None:
            if self.frames_written == 0:
                logger.warning('%s: no frames were written, no video created', self.path)
            return
        self._writer.release()
        self._writer = None
        readable = _frame_count(self._temporary)
        if readable < self.frames_written:
            self.discard()
            raise VideoIOError(f'{self.path}: the video could not be written completely (full disk or '
                               f'write error: {readable} of {self.frames_written} frames read back); '
                               f'it was not created')
        os.chmod(self._temporary, file_mode())
        os.replace(self._temporary, self.path)
        self._temporary = None

    def discard(self) -> None:
        """Drop the temporary file without creating the video."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._temporary is not None and os.path.exists(self._temporary):
            os.remove(self._temporary)
        self._temporary = None

    def __enter__(self) -> 'VideoWriter':
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()
