"""Loading a configuration file and applying command-line overrides to the global config."""
import ast
import copy
import json
import os
import runpy
from typing import Any, Sequence

from easydict import EasyDict as edict

from utils.cli import UserError


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message names the key or file."""


def load_config_file(path: str) -> edict:
    """Read a config: a Python file defining `cfg` or `__C` (like config.py) or a JSON file."""
    if not os.path.isfile(path):
        raise ConfigError(f'{path}: config file not found')
    if path.endswith('.json'):
        try:
            with open(path) as f:
                content = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f'{path}: not valid JSON ({e})') from e
        if not isinstance(content, dict):
            raise ConfigError(f'{path}: expected a JSON object of overrides (e.g. {{"TEST": '
                              f'{{"MEMORIZE_EVERY": 3}}}}), got a {type(content).__name__}')
        return edict(content)
    try:
        namespace = runpy.run_path(path)
    except Exception as e:
        raise ConfigError(f'{path}: could not be executed ({type(e).__name__}: {e})') from e
    for name in ('cfg', '__C'):
        if isinstance(namespace.get(name), dict):
            return edict(namespace[name])
    raise ConfigError(f'{path}: defines neither `cfg` nor `__C`')


def merge_config(base: edict, update: dict, prefix: str = '') -> None:
    """Copy the values of `update` into `base`; every key must already exist in `base`."""
    for key, value in update.items():
        name = prefix + key
        if key not in base:
            raise ConfigError(f'unknown config key {name}')
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f'{name} is a section; got {value!r}')
            merge_config(base[key], value, name + '.')
        else:
            base[key] = _typed_like(base[key], value, name)


def apply_overrides(cfg: edict, pairs: Sequence[str]) -> None:
    """Apply `KEY VALUE KEY VALUE ...`; each value is parsed to the type of the existing value."""
    if len(pairs) % 2:
        raise ConfigError(f'--set takes KEY VALUE pairs; got an odd number of words: {list(pairs)}')
    for key, text in zip(pairs[::2], pairs[1::2]):
        node = cfg
        parts = key.split('.')
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f'unknown config key {key}')
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f'unknown config key {key}')
        node[parts[-1]] = _parse_like(node[parts[-1]], text, key)


def _parse_like(current: Any, text: str, key: str) -> Any:
    if isinstance(current, str):
        return text
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ('1', 'true', 'yes', 'on'):
            return True
        if lowered in ('0', 'false', 'no', 'off'):
            return False
        raise ConfigError(f'{key} is a boolean; cannot read {text!r}')
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConfigError(f'{key} expects a {type(current).__name__}; cannot read {text!r}') from e
    return _typed_like(current, value, key)


def _typed_like(current: Any, value: Any, key: str) -> Any:
    if current is None or isinstance(current, str) and isinstance(value, str):
        return copy.deepcopy(value)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(current)(value)
    raise ConfigError(f'{key} expects a {type(current).__name__}; got {value!r}')

MIN_SHORT_SIDE = 32     # the networks' feature maps are 1/16 of the input: at least 2 pixels


def check_test_options(cfg: edict) -> None:
    """Refuse TEST options that would fail or silently produce nothing while segmenting."""
    test = cfg.TEST
    if test.MEMORIZE_EVERY < 1:
        raise ConfigError(f'TEST.MEMORIZE_EVERY must be at least 1 (memorise every N-th frame), '
                          f'got {test.MEMORIZE_EVERY}')
    if test.N_MAX_OBJECTS < 1:
        raise ConfigError(f'TEST.N_MAX_OBJECTS must be at least 1, got {test.N_MAX_OBJECTS}')
    if test.VIDEO_SHORT_SIDE != 0 and test.VIDEO_SHORT_SIDE < MIN_SHORT_SIDE:
        raise ConfigError(f'TEST.VIDEO_SHORT_SIDE must be 0 (the input size) or at least {MIN_SHORT_SIDE} '
                          f'pixels, got {test.VIDEO_SHORT_SIDE}')
    if test.MAX_MEMORY_FRAMES < 0:
        raise ConfigError(f'TEST.MAX_MEMORY_FRAMES must be 0 (keep every memorised frame) or the number '
                          f'of recent memorised frames to keep, got {test.MAX_MEMORY_FRAMES}')
    if test.KEPT_CAPTURES < 1:
        raise ConfigError(f'TEST.KEPT_CAPTURES must be at least 1 (the video being segmented), '
                          f'got {test.KEPT_CAPTURES}')
    scales = list(test.FRAME_SCALES)
    if not scales:
        raise ConfigError('TEST.FRAME_SCALES is empty; give at least one scale, e.g. [1.0]')
    wrong = [scale for scale in scales if not isinstance(scale, (int, float)) or isinstance(scale, bool)
             or not scale > 0]
    if wrong:
        raise ConfigError(f'TEST.FRAME_SCALES must hold positive numbers, got {scales}')
