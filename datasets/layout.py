"""Checks and listings shared by the dataset readers; failures name the path and the layout."""
import os
from typing import Iterable, List

from utils.io import DataError


def require_dir(path: str, what: str, layout: str) -> str:
    """`path` when it is a folder, else a DataError naming it, what it is and the layout."""
    if not os.path.isdir(path):
        raise DataError(f'{path}: {what} not found; expected the layout {layout}')
    return path


def require_file(path: str, what: str, layout: str) -> str:
    """`path` when it is a file, else a DataError naming it, what it is and the layout."""
    if not os.path.isfile(path):
        raise DataError(f'{path}: {what} not found; expected the layout {layout}')
    return path


def list_stems(folder: str, extension: str) -> List[str]:
    """Sorted names, without the extension, of the files in `folder` ending with `extension`."""
    return sorted(name[:-len(extension)] for name in os.listdir(folder)
                  if name.endswith(extension) and not name.startswith('.'))


def require_stems(folder: str, available: Iterable[str], wanted: Iterable[str], what: str,
                  extension: str) -> None:
    """A DataError naming the `wanted` files (stems) that `folder` lacks, if any."""
    present = set(available)
    missing = [stem for stem in wanted if stem not in present]
    if missing:
        shown = ', '.join(stem + extension for stem in missing[:5])
        more = f' and {len(missing) - 5} more' if len(missing) > 5 else ''
        raise DataError(f'{folder}: lacks {shown}{more} ({what})')
