"""What the test, inference and training code needs to know about one video on disk."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Video:
    """One video of a dataset split.

    frame_paths: every frame to run on, in order (index i is frame i of the run).
    given_masks: frame index -> annotation file given as input (DAVIS: frame 0; YouTube-VOS:
        each frame where an object first appears, holding that object's mask).
    output_frames: frame indexes whose masks must be written (YouTube-VOS lists every 5th
        frame when the all-frames folder is used); None means every frame.
    ground_truth: frame index -> annotation file to score against (empty when the split has
        no public ground truth, e.g. DAVIS test-dev or YouTube-VOS valid).
    output_names: file stem to write for each frame (e.g. '00005'); same length as frame_paths.
    binary: the dataset has one object per video and any non-zero label is it (DAVIS 2016).
    """
    name: str
    frame_paths: List[str]
    given_masks: Dict[int, str]
    output_names: List[str]
    output_frames: Optional[List[int]] = None
    ground_truth: Dict[int, str] = field(default_factory=dict)
    binary: bool = False
    flow_paths: Optional[List[Optional[str]]] = None   # teacher flow of each frame (training)

    def __len__(self) -> int:
        return len(self.frame_paths)
