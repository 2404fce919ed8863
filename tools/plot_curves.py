"""Plot TensorBoard scalars of a training run as a PNG (no TensorBoard or matplotlib needed).

    python tools/plot_curves.py output/<exp>/logs --tags Loss/Batch Loss/Epoch --out curves.png
"""
import argparse
import glob
import os
import struct
import sys
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.io import write_image  # noqa: E402

Series = Dict[str, List[Tuple[int, float]]]


def read_scalars(log_dir: str) -> Series:
    """Every scalar of the event files in `log_dir`: tag -> [(step, value)] sorted by step."""
    from tensorboardX.proto import event_pb2
    series: Series = {}
    files = sorted(glob.glob(os.path.join(log_dir, 'events.out.tfevents.*')))
    if not files:
        raise FileNotFoundError(f'{log_dir}: no TensorBoard event files')
    for path in files:
        with open(path, 'rb') as f:
            data = f.read()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack('<Q', data[offset:offset + 8])
            record = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            if len(record) < length:
                break
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField('simple_value'):
                    series.setdefault(value.tag, []).append((event.step, value.simple_value))
    return {tag: sorted(points) for tag, points in series.items()}


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average."""
    out, last = np.empty_like(values), values[0]
    for i, v in enumerate(values):
        last = weight * last + (1 - weight) * v
        out[i] = last
    return out


def draw_panel(tag: str, points: List[Tuple[int, float]], size=(640, 400), smoothing=0.9) -> np.ndarray:
    width, height = size
    left, right, top, bottom = 70, 20, 40, 45
    image = np.full((height, width, 3), 255, np.uint8)
    steps = np.array([p[0] for p in points], dtype=np.float64)
    values = np.array([p[1] for p in points], dtype=np.float64)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    hi = hi if hi > lo else lo + 1.0
    s_lo, s_hi = steps.min(), max(steps.max(), steps.min() + 1)

    def xy(s, v):
        x = left + (s - s_lo) / (s_hi - s_lo) * (width - left - right)
        y = top + (hi - v) / (hi - lo) * (height - top - bottom)
        return np.stack([x, y], axis=-1).astype(np.int32)

    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = int(xy(np.array([s_lo]), np.array([v]))[0, 1])
        cv2.line(image, (left, y), (width - right, y), (225, 225, 225), 1)
        cv2.putText(image, f'{v:.3g}', (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    cv2.rectangle(image, (left, top), (width - right, height - bottom), (120, 120, 120), 1)
    raw = xy(steps, values)
    few = len(values) <= 100
    cv2.polylines(image, [raw.reshape(-1, 1, 2)], False, (180, 90, 20) if few else (230, 190, 150),
                  2 if few else 1, cv2.LINE_AA)
    if not few:
        cv2.polylines(image, [xy(steps, smooth(values, smoothing)).reshape(-1, 1, 2)], False, (180, 90, 20), 2,
                      cv2.LINE_AA)
    cv2.putText(image, tag, (left, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(image, f'step {int(s_lo)}', (left, height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (80, 80, 80), 1,
                cv2.LINE_AA)
    label = f'step {int(s_hi)}'
    cv2.putText(image, label, (width - right - 8 * len(label), height - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (80, 80, 80), 1, cv2.LINE_AA)
    return image


def plot(log_dir: str, tags: Sequence[str], out: str) -> str:
    series = read_scalars(log_dir)
    missing = [t for t in tags if t not in series]
    if missing:
        raise KeyError(f'{log_dir}: no scalars {missing}; available: {sorted(series)}')
    panels = [draw_panel(tag, series[tag]) for tag in (tags or sorted(series))]
    write_image(out, np.concatenate(panels, axis=0))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('log_dir')
    parser.add_argument('--tags', nargs='*', default=[], help='scalar tags (default: all)')
    parser.add_argument('--out', default='curves.png')
    args = parser.parse_args(argv)
    print(plot(args.log_dir, args.tags, args.out))


if __name__ == '__main__':
    main()
