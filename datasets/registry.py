"""The benchmarks RMNet was published on, by config name, and the training-list syntax 'NAMExN'."""
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

from datasets import davis, youtube_vos
from datasets.layout import require_dir
from datasets.video import Video
from utils.configuration import ConfigError

SPLITS: Dict[str, Tuple[str, ...]] = {
    'DAVIS': davis.DAVIS_SPLITS,
    'DAVIS2016': davis.DAVIS2016_SPLITS,
    'YOUTUBE_VOS': youtube_vos.SPLITS,
    'YOUTUBE_VOS_2019': youtube_vos.SPLITS,
}
LAYOUTS = {'DAVIS': davis.LAYOUT, 'DAVIS2016': davis.LAYOUT_2016,
           'YOUTUBE_VOS': youtube_vos.LAYOUT, 'YOUTUBE_VOS_2019': youtube_vos.LAYOUT}
_REPEAT = re.compile(r'(?P<name>.+?)x(?P<factor>\d+(?:\.\d*)?|\.\d+)')


def list_videos(cfg, dataset_name: str, split: Optional[str] = None) -> List[Video]:
    """The videos of a benchmark split (None: cfg.DATASETS.<dataset_name>.TEST_SPLIT)."""
    if dataset_name not in SPLITS:
        raise ConfigError(f'unknown dataset {dataset_name!r}; known: {", ".join(SPLITS)}')
    options = cfg.DATASETS[dataset_name]
    split = split or options.TEST_SPLIT
    if split not in SPLITS[dataset_name]:
        raise ConfigError(f'{dataset_name} has no split {split!r}; '
                         f'splits: {", ".join(SPLITS[dataset_name])}')
    root_key = 'TEST_DEV_ROOT' if dataset_name == 'DAVIS' and split == 'test-dev' else 'ROOT'
    root = require_dir(os.path.expanduser(options[root_key]),
                       f'{dataset_name} root (cfg.DATASETS.{dataset_name}.{root_key})',
                       LAYOUTS[dataset_name])
    if dataset_name == 'DAVIS':
        return davis.list_davis(root, split, options.RESOLUTION)
    if dataset_name == 'DAVIS2016':
        return davis.list_davis2016(root, split, options.RESOLUTION)
    return youtube_vos.list_youtube_vos(root, split)


def parse_dataset_list(names: Union[str, Sequence[str]]) -> List[Tuple[str, float]]:
    """'DAVISx5' -> ('DAVIS', 5): each name with its repeat factor (default 1; int when whole,
    below 1 the fraction of the dataset to use)."""
    pairs = []
    for entry in [names] if isinstance(names, str) else names:
        match = _REPEAT.fullmatch(entry)
        name, factor = (match['name'], float(match['factor'])) if match else (entry, 1.0)
        if not name or factor <= 0:
            raise ConfigError(f'{entry!r}: expected a dataset name with an optional positive '
                             f'repeat suffix, e.g. "DAVISx5" or "YOUTUBE_VOSx0.5"')
        pairs.append((name, int(factor) if factor.is_integer() else factor))
    return pairs
