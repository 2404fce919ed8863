"""Config file loading and typed command-line overrides."""
import copy
import json

import pytest

from config import cfg as default_cfg
from utils.configuration import ConfigError, apply_overrides, load_config_file, merge_config


@pytest.fixture
def cfg():
    return copy.deepcopy(default_cfg)


def test_overrides_are_typed_by_the_existing_value(cfg):
    apply_overrides(cfg, ['TEST.MEMORIZE_EVERY', '3', 'TEST.FLIP_LR', 'true', 'TEST.FRAME_SCALES', '[0.75, 1.0]',
                          'DATASETS.DAVIS.ROOT', '/data/DAVIS', 'TRAIN.LEARNING_RATE', '2e-5',
                          'TRAIN.BETAS', '(0.8, 0.99)'])
    assert cfg.TEST.MEMORIZE_EVERY == 3 and cfg.TEST.FLIP_LR is True
    assert cfg.TEST.FRAME_SCALES == [0.75, 1.0] and cfg.DATASETS.DAVIS.ROOT == '/data/DAVIS'
    assert cfg.TRAIN.LEARNING_RATE == 2e-5 and cfg.TRAIN.BETAS == (0.8, 0.99)


@pytest.mark.parametrize('pairs, message', [
    (['TEST.NOPE', '1'], 'unknown config key TEST.NOPE'),
    (['TEST', '1'], 'unknown config key TEST'),
    (['TEST.MEMORIZE_EVERY', 'five'], 'TEST.MEMORIZE_EVERY expects a int'),
    (['TEST.MEMORIZE_EVERY', '2.5'], 'TEST.MEMORIZE_EVERY expects a int'),
    (['TEST.FLIP_LR', 'maybe'], 'TEST.FLIP_LR is a boolean'),
    (['TEST.MEMORIZE_EVERY'], 'odd number'),
])
def test_bad_overrides_are_named(cfg, pairs, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(cfg, pairs)


def test_python_and_json_config_files(cfg, tmp_path):
    py = tmp_path / 'my_config.py'
    py.write_text('from easydict import EasyDict\ncfg = EasyDict({"TEST": {"MEMORIZE_EVERY": 7}})\n')
    merge_config(cfg, load_config_file(str(py)))
    assert cfg.TEST.MEMORIZE_EVERY == 7 and cfg.TEST.N_MAX_OBJECTS == 10
    js = tmp_path / 'over.json'
    js.write_text(json.dumps({'TEST': {'FLIP_LR': True}}))
    merge_config(cfg, load_config_file(str(js)))
    assert cfg.TEST.FLIP_LR is True
    bad = tmp_path / 'bad.json'
    bad.write_text('{')
    with pytest.raises(ConfigError, match='bad.json: not valid JSON'):
        load_config_file(str(bad))
    with pytest.raises(ConfigError, match='unknown config key TEST.NOPE'):
        merge_config(cfg, {'TEST': {'NOPE': 1}})
