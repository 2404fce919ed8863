"""Finding a compiled op: the module installed by its setup.py, else a build on first use (ninja).

A failed build is never an error: `load_extension` logs one warning and returns None, and the
caller uses its PyTorch/NumPy path instead.
"""
import importlib
import logging
import os
from types import ModuleType
from typing import Dict, Optional, Sequence

logger = logging.getLogger(__name__)

_loaded: Dict[str, Optional[ModuleType]] = {}


def load_extension(name: str, sources: Sequence[str], cuda: bool) -> Optional[ModuleType]:
    """Return the compiled module `name`, building it from `sources` (paths beside the caller)."""
    if name in _loaded:
        return _loaded[name]
    module = None
    try:
        module = importlib.import_module(name)
    except ImportError:
        module = _build(name, sources, cuda)
    _loaded[name] = module
    return module


def _build(name: str, sources: Sequence[str], cuda: bool) -> Optional[ModuleType]:
    if os.environ.get('RMNET_NO_BUILD', '') not in ('', '0'):
        logger.warning('%s is not installed and RMNET_NO_BUILD is set: using the PyTorch path', name)
        return None
    try:
        import multiprocessing
        from torch.utils import cpp_extension
        level = logging.INFO if multiprocessing.current_process().name == 'MainProcess' else logging.DEBUG
        logger.log(level, 'Building %s on first use (cached afterwards)', name)
        extra = {'extra_cuda_cflags': ['-O3']} if cuda else {}
        return cpp_extension.load(name=name, sources=list(sources), verbose=False,
                                  extra_cflags=['-O3', '-ffp-contract=off'], with_cuda=cuda, **extra)
    except Exception as e:  # any compiler or toolchain failure means: fall back
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logger.warning('Could not build %s (%s): using the PyTorch path. '
                       'Build it with `python setup.py install` in its folder for speed.',
                       name, first_line)
        return None
