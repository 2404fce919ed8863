"""Loading a configuration file and applying command-line overrides to the global config."""
import ast
import copy
import json
import os
import runpy
from typing import Any, Sequence

from easydict import EasyDict as edict


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the key or file."""


def load_config_file(path: str) -> edict:
    """Read a config: a Python file defining `cfg` or `__C` (like config.py) or a JSON file."""
    if not os.path.isfile(path):
        raise ConfigError(f'{path}: config file not found')
    if path.endswith('.json'):
        try:
            with open(path) as f:
                return edict(json.load(f))
        except json.JSONDecodeError as e:
            raise ConfigError(f'{path}: not valid JSON ({e})') from e
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
