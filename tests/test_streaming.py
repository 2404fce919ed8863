"""Frames paired with their masks, and the video's length handed to the segmenter."""
import numpy as np

from core.streaming import segment_stream


class RecordingSegmenter:
    """Yields the first channel of every frame as its 'mask' and records the length it was told."""

    def segment(self, frames, objects):
        self.length = len(frames) if hasattr(frames, '__len__') else None
        for frame in frames:
            yield frame[..., 0]


def test_frames_come_back_with_their_masks_and_the_length_is_known():
    frames = [np.full((2, 3, 3), t, dtype=np.uint8) for t in range(4)]
    segmenter = RecordingSegmenter()
    pairs = list(segment_stream(segmenter, frames, objects=None))
    assert segmenter.length == 4
    assert [int(frame[0, 0, 0]) for frame, _ in pairs] == [0, 1, 2, 3]
    assert all(np.array_equal(ids, frame[..., 0]) for frame, ids in pairs)
    segmenter = RecordingSegmenter()
    assert len(list(segment_stream(segmenter, iter(frames), objects=None))) == 4
    assert segmenter.length is None
