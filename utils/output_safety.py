"""Checks that keep results away from the data they come from and from earlier results.

- An output folder must not be, contain or lie inside a configured dataset folder
  (every ROOT, *_ROOT, IMAGE_DIR, MASK_DIR of cfg.DATASETS), so ground truth is never overwritten.
- Names read from split files and meta.json become path components: they must be plain names.
- A benchmark split writes into a fresh or empty folder. A user's video too, or, with
  overwrite, it replaces only the outputs of an earlier run there (USER_VIDEO_OUTPUTS), and
  only once the new run has finished: until then it writes into a folder of its own.
- Temporary files left by a killed process of this host (utils.io.TEMPORARY_PREFIX) are removed
  at the next start; those of other hosts sharing the folder are left to their own.
"""
import contextlib
import datetime
import itertools
import logging
import os
import re
import shutil
from typing import Dict, Iterator, List, Optional, Sequence

from utils.io import HOST_TAG, TEMPORARY_PREFIX, DataError

logger = logging.getLogger(__name__)

DATASET_FOLDER_KEYS = re.compile(r'(.*_)?ROOT|IMAGE_DIR|MASK_DIR')
USER_VIDEO_OUTPUTS = ('masks', 'binary', 'overlay.mp4', 'overlay.avi')
_TEMPORARY = re.compile(re.escape(TEMPORARY_PREFIX) + r'([0-9a-f]{8})-(\d+)-')


def dataset_folders(cfg) -> Dict[str, str]:
    """Every configured dataset folder, as cfg key -> absolute path (symbolic links resolved)."""
    folders = {}
    for dataset, options in cfg.DATASETS.items():
        for key, value in options.items():
            if DATASET_FOLDER_KEYS.fullmatch(key) and isinstance(value, str) and value:
                folders[f'cfg.DATASETS.{dataset}.{key}'] = _resolved(value)
    return folders


def _resolved(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_folder(cfg, out_dir: str) -> str:
    """`out_dir`, refused when it is, contains or lies inside a configured dataset folder."""
    target = _resolved(out_dir)
    for key, folder in dataset_folders(cfg).items():
        if target == folder:
            relation = 'is'
        elif _inside(target, folder):
            relation = 'lies inside'
        elif _inside(folder, target):
            relation = 'contains'
        else:
            continue
        raise DataError(f'{out_dir}: the output folder {relation} the dataset folder {folder} ({key}); '
                        f'writing there could overwrite the dataset. Choose another --output')
    return out_dir


def check_name(name: str, source: str, what: str = 'sequence name') -> str:
    """`name` when it is a plain file or folder name (a string; no '/', '\\', '..', not absolute)."""
    plain = (isinstance(name, str) and name not in ('', '.', '..') and not os.path.isabs(name)
             and not any(character in name for character in '/\\\0'))
    if not plain:
        raise DataError(f'{source}: {what} {name!r} is not a plain name (no "/", "\\", "..", '
                        f'absolute path or empty name); results are only written inside the output folder')
    return name


def check_names(names: Sequence[str], source: str, what: str = 'sequence name') -> List[str]:
    return [check_name(name, source, what) for name in names]


def check_user_video_output(out_dir: str, overwrite: bool, inputs: Sequence[str] = ()) -> None:
    """A user's video writes USER_VIDEO_OUTPUTS into `out_dir`: refuse a non-empty folder unless
    `overwrite`, and inputs (the video, the mask files) that lie among those outputs."""
    for path in inputs:
        for output in _user_video_outputs(out_dir):
            if _inside(_resolved(path), _resolved(output)):
                raise DataError(f'{path}: this input lies in {output}, which the run replaces; copy it '
                                f'elsewhere or choose another --output')
    held = _held(out_dir)
    if held and not overwrite:
        raise DataError(f'{out_dir}: the output folder is not empty (it holds {held}); choose a new '
                        f'--output, or pass --overwrite to replace an earlier run\'s masks/, binary/ '
                        f'and overlay.mp4 there')


def check_empty_output(out_dir: str) -> None:
    """A benchmark split's results go into a fresh or empty folder, so that the masks, scores
    and archive of two runs never mix and no earlier result is replaced."""
    held = _held(out_dir)
    if held:
        raise DataError(f'{out_dir}: the output folder is not empty (it holds {held}); results of '
                        f'two runs are never mixed: choose a new --output or --exp')


def _held(folder: str) -> str:
    """What a folder holds, shortly ('' when it is absent or empty)."""
    entries = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return ', '.join(entries[:5]) + (f' and {len(entries) - 5} more' if len(entries) > 5 else '')


def earlier_user_video_outputs(out_dir: str) -> List[str]:
    """The USER_VIDEO_OUTPUTS of an earlier run present in `out_dir`."""
    return [path for path in _user_video_outputs(out_dir) if os.path.lexists(path)]


def timestamp() -> str:
    """The name of a run's folder when it has none: the current local time."""
    return datetime.datetime.now().strftime('%Y-%m-%d_%H-%M-%S')


def unfinished_run_folder(out_dir: str) -> str:
    """A new folder in `out_dir` for a run that is to replace the earlier run's outputs there:
    what it writes stays apart (and is kept there if the run fails) until
    replace_user_video_outputs moves it over them."""
    return claim_new_folder(os.path.join(out_dir, f'unfinished-run-{timestamp()}'))


def replace_user_video_outputs(finished: str, out_dir: str) -> None:
    """Put the USER_VIDEO_OUTPUTS of the finished run in `finished` in place of the earlier
    run's in `out_dir`, one rename each (a final name holds the earlier or the new output,
    never a mix); earlier outputs the new run does not have are removed, then `finished`."""
    replaced = os.path.join(finished, 'replaced')
    os.mkdir(replaced)
    for name in USER_VIDEO_OUTPUTS:
        final, new = os.path.join(out_dir, name), os.path.join(finished, name)
        if os.path.lexists(final):
            os.rename(final, os.path.join(replaced, name))
            logger.info('--overwrite: replaced %s', final)
        if os.path.lexists(new):
            os.rename(new, final)
    try:
        shutil.rmtree(finished)
    except OSError as e:
        logger.warning('The new outputs are in place, but %s (the replaced ones) could not be removed: %s',
                       finished, e.strerror or e)


def _user_video_outputs(out_dir: str) -> List[str]:
    return [os.path.join(out_dir, name) for name in USER_VIDEO_OUTPUTS]


def claim_new_folder(path: str) -> str:
    """Create and return a folder that did not exist: `path`, else `path`-2, -3, ... (os.mkdir
    either creates a folder or fails, so two processes never claim the same one)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        for n in itertools.count(1):
            candidate = path if n == 1 else f'{path}-{n}'
            try:
                os.mkdir(candidate)
                return candidate
            except FileExistsError:
                continue
    except OSError as e:
        raise DataError(f'{path}: the output folder cannot be created ({e.strerror or e})') from e


@contextlib.contextmanager
def removed_if_left_empty(folder: str, existed: Optional[bool] = None) -> Iterator[None]:
    """Run the block; if it fails and `folder`, absent before (or `existed` False: created for
    this run), is still empty, remove it."""
    existed = os.path.isdir(folder) if existed is None else existed
    try:
        yield
    except BaseException:
        if not existed and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str) -> List[str]:
    """Delete the temporary files under `folder` written on this host by a process that no longer
    runs (a kill -9 or a power cut); return their paths. A process id says nothing about another
    host's processes, so their files are kept."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for parent, _, names in os.walk(folder):
        for name in names:
            match = _TEMPORARY.match(name)
            if (match and match.group(1) == HOST_TAG and int(match.group(2)) != os.getpid()
                    and not _alive(int(match.group(2)))):
                path = os.path.join(parent, name)
                try:
                    os.remove(path)
                except FileNotFoundError:
                    continue
                removed.append(path)
    if removed:
        logger.info('removed %d temporary file(s) an interrupted run left in %s', len(removed), folder)
    return removed
