"""Frames of a user's video (a video file or a folder of images), a prefetching reader and an H.264 mp4 writer.

Frames are decoded lazily, one at a time, so host memory does not grow with the video length.
Every problem raises VideoIOError with a message that names the file.
"""
import logging
import os
import queue
import re
import stat
import threading
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

try:
    import av
    ENCODING_ERRORS: Tuple[type, ...] = (OSError, ValueError, av.error.FFmpegError)
except ImportError:     # the writer falls back to OpenCV with a warning
    av = None
    ENCODING_ERRORS = (OSError, ValueError)

from utils.io import DataError, file_mode, read_frame, temporary_path

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
FOLDER_FPS = 24.0        # DAVIS frame rate, used for folders of frames unless told otherwise
FALLBACK_FPS = 25.0      # for video files whose header has no frame rate
H264_ENCODER = 'libx264'  # FFmpeg encoder used through PyAV
OPENCV_CODEC = 'mp4v'    # OpenCV's mp4 codec when PyAV cannot encode
FALLBACK_CODEC = 'MJPG'  # written as .avi when OpenCV cannot open an mp4 either


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


class _PyAVEncoder:
    """H.264 (yuv420p) in an mp4 with the index at the front (+faststart), through PyAV."""

    def __init__(self, path: str, fps: float, size: Tuple[int, int]) -> None:
        if av is None:
            raise ImportError('PyAV (the av package) is not installed')
        self._container = av.open(path, 'w', format='mp4', options={'movflags': '+faststart'})
        try:
            self._stream = self._container.add_stream(H264_ENCODER, rate=Fraction(fps).limit_denominator(100000))
            self._stream.height, self._stream.width = size
            self._stream.pix_fmt = 'yuv420p'
            self._stream.codec_context.open()
        except BaseException:
            self._container.close()
            raise
        self._index = 0

    def write(self, frame: np.ndarray) -> None:
        picture = av.VideoFrame.from_ndarray(frame, format='rgb24')
        picture.pts = self._index
        self._index += 1
        self._container.mux(self._stream.encode(picture))

    def close(self) -> None:
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def release(self) -> None:
        self._container.close()


class _OpenCVEncoder:
    """cv2.VideoWriter with a FourCC codec."""

    def __init__(self, path: str, fps: float, size: Tuple[int, int], codec: str) -> None:
        height, width = size
        self._writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (width, height))
        if not self._writer.isOpened():
            self._writer.release()
            raise OSError(f'cv2.VideoWriter cannot open codec {codec}')

    def write(self, frame: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()

    release = close


Encoder = Union[_PyAVEncoder, _OpenCVEncoder]


def even_size(size: Tuple[int, int]) -> Tuple[int, int]:
    """(H, W) rounded up to even numbers, as yuv420p needs."""
    return size[0] + size[0] % 2, size[1] + size[1] % 2


class VideoWriter:
    """Writes RGB frames to an H.264 mp4 (yuv420p, +faststart) that browsers and notebooks play.

    Encoded through PyAV (FFmpeg's libx264). Odd heights or widths are padded by one row or
    column repeating the last one (yuv420p needs even sizes). If PyAV cannot encode, one warning
    and OpenCV's writer takes over ('mp4v' mp4, or an MJPG .avi when mp4 cannot be opened).
    The size comes from `size` (H, W) or the first frame. Frames go to a hidden temporary file
    beside the target that close() renames into place; leaving the `with` block through an
    exception deletes it, so the final name never holds a partial video. `path` is the file
    written (its extension becomes .avi after the last fallback).
    """

    def __init__(self, path: str, fps: float, size: Optional[Tuple[int, int]] = None) -> None:
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.size = tuple(size) if size is not None else None
        self.frames_written = 0
        self._encoder: Optional[Encoder] = None
        self._temporary: Optional[str] = None
        if self.size is not None:
            self._open()

    def _try(self, path: str, make: Callable[[str], Encoder]) -> Optional[str]:
        """Open an encoder on a temporary file for `path`; None, or the reason it failed."""
        temporary = temporary_path(path)
        try:
            self._encoder = make(temporary)
        except Exception as e:  # any encoder failure: the next writer is tried
            os.remove(temporary)
            return str(e) or type(e).__name__
        self._temporary, self.path = temporary, path
        return None

    def _open(self) -> None:
        size, target = even_size(self.size), self.path
        avi = os.path.splitext(target)[0] + '.avi'
        attempts = [
            ('H.264 with PyAV', target, lambda t: _PyAVEncoder(t, self.fps, size)),
            (f'{OPENCV_CODEC} with OpenCV', target, lambda t: _OpenCVEncoder(t, self.fps, size, OPENCV_CODEC)),
            (f'{FALLBACK_CODEC} with OpenCV', avi, lambda t: _OpenCVEncoder(t, self.fps, size, FALLBACK_CODEC))]
        failures: List[str] = []
        for name, path, make in attempts:
            reason = self._try(path, make)
            if reason is None:
                if failures:
                    logger.warning('%s: cannot encode %s; writing %s as %s instead (browsers may not play it)',
                                   target, '; '.join(failures), path, name)
                return
            failures.append(f'{name} ({reason})')
        raise VideoIOError(f'{target}: cannot open a video writer: {"; ".join(failures)}; '
                           f'is the folder writable?')

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
        if self._encoder is None:
            self._open()
        height, width = even_size(self.size)
        frame = np.pad(frame, ((0, height - frame.shape[0]), (0, width - frame.shape[1]), (0, 0)), mode='edge')
        try:
            self._encoder.write(np.ascontiguousarray(frame))
        except ENCODING_ERRORS as e:
            raise VideoIOError(f'{self.path}: cannot write frame {self.frames_written} ({e})') from e
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file and move it to its final name (with the umask's mode), once it reads
        back with every frame; otherwise (a full disk, a write error) drop it and raise
        VideoIOError."""
        if self._encoder is None:
            if self.frames_written == 0:
                logger.warning('%s: no frames were written, no video created', self.path)
            return
        encoder, self._encoder = self._encoder, None
        try:
            encoder.close()
        except ENCODING_ERRORS as e:
            self.discard()
            raise VideoIOError(f'{self.path}: cannot finish the video ({e})') from e
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
        if self._encoder is not None:
            self._encoder.release()
            self._encoder = None
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
