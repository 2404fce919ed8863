"""Published RMNet weights by name: downloaded once into a cache folder, checked on every use.

The cache folder is $RMNET_CACHE, or ~/.cache/rmnet. Downloads go to <file>.part and resume
from there (HTTP Range) after an interruption; processes that need the same file at once take
turns (<file>.lock), so one downloads and the others find the file. No checksums were
published, so the size and sha256 of the first copy that loads as an RMNet checkpoint are
recorded in <file>.json and compared on later uses. A file that differs from its record is refused: when it does not load the
message says how to fetch it again, when it loads only the record is to be removed.
"""
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import urllib.error
import urllib.request
from typing import Dict, Iterator, Optional, Tuple

from tqdm import tqdm

from utils.checkpoint import CheckpointError, NETWORK_KEYS, read_checkpoint, require_state_dict
from utils.io import write_json

try:
    import fcntl
except ImportError:     # Windows
    fcntl = None

logger = logging.getLogger(__name__)

PUBLISHED: Dict[str, Tuple[str, str]] = {
    'davis': ('RMNet-DAVIS.pth', 'https://gateway.infinitescript.com/?fileName=RMNet-DAVIS.pth'),
    'youtubevos': ('RMNet-YouTubeVOS.pth',
                   'https://gateway.infinitescript.com/?fileName=RMNet-YouTubeVOS.pth'),
}
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 30


class WeightsError(CheckpointError):
    """Weights that cannot be found, downloaded or trusted; the message says what to do."""


def cache_dir() -> str:
    """The folder for downloaded weights: $RMNET_CACHE or ~/.cache/rmnet."""
    return os.path.expanduser(os.environ.get('RMNET_CACHE') or os.path.join('~', '.cache', 'rmnet'))


def _published_key(name: str) -> Optional[str]:
    key = name.lower().replace('-', '').replace('_', '')
    return key if key in PUBLISHED else None


def resolve_weights(name_or_path: str, progress: bool = True) -> str:
    """'davis' / 'youtubevos' -> the cached published file (downloaded if needed); a path -> itself.

    A file literally named like a published model is given as ./davis.
    """
    key = _published_key(name_or_path)
    if key is None:
        if os.path.isfile(name_or_path):
            return name_or_path
        state = 'is a folder, not a weights file' if os.path.isdir(name_or_path) else 'no such weights file'
        raise WeightsError(f'{name_or_path}: {state} (published weights by name: {", ".join(PUBLISHED)})')
    file_name, url = PUBLISHED[key]
    path = os.path.join(cache_dir(), file_name)
    if not os.path.isfile(path):
        with download_lock(path):
            if not os.path.isfile(path):        # another process may have fetched it meanwhile
                logger.info('downloading the %s weights from %s to %s', key, url, path)
                download(url, path, name=key, progress=progress)
    check_record(path, url)
    return path


@contextlib.contextmanager
def download_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on <path>.lock: processes that need the same weights at once
    (the ranks of a multi-GPU run) download them one at a time, into one <path>.part. The
    operating system releases the lock when its holder ends, killed or not. Where fcntl is
    missing (Windows) there is no lock."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path + '.lock', 'a') as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _where_to_put(name: str, url: str, path: str) -> str:
    return (f'Download {url} by other means and save it as\n  {path}\n'
            f'(or set RMNET_CACHE to a folder holding {os.path.basename(path)}, '
            f'or pass the path of your copy instead of {name!r}).')


def _total_size(response: http.client.HTTPResponse, offset: int) -> Optional[int]:
    """The whole file's size from Content-Range (206) or Content-Length (200), if given."""
    if response.status == 206:
        match = re.match(r'bytes (\d+)-\d+/(\d+|\*)', response.headers.get('Content-Range', ''))
        if match is None or int(match.group(1)) != offset:
            raise WeightsError(f'{response.url}: asked for bytes from {offset}, the server answered '
                               f'{response.headers.get("Content-Range")!r}')
        return int(match.group(2)) if match.group(2) != '*' else None
    length = response.headers.get('Content-Length')
    return int(length) if length is not None else None


def _looks_like_checkpoint(path: str) -> bool:
    """torch.save files start with a zip header (PyTorch >= 1.6) or a pickle protocol byte."""
    with open(path, 'rb') as f:
        head = f.read(4)
    return head == b'PK\x03\x04' or head[:1] == b'\x80'


def download(url: str, path: str, name: str = 'published', progress: bool = True) -> None:
    """Fetch `url` into `path` through `path`.part, resuming a previous partial download."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + '.part'
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    headers = {'User-Agent': 'rmnet-weights'}
    if offset:
        headers['Range'] = f'bytes={offset}-'
        logger.info('resuming %s from byte %d', part, offset)
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            logger.warning('%s: the server refused to resume (HTTP 416); starting again', part)
            os.remove(part)
            return download(url, path, name, progress)
        raise WeightsError(f'could not download the {name} weights: {url} answered HTTP {e.code} '
                           f'{e.reason}.\n{_where_to_put(name, url, path)}') from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, 'reason', e)
        kept = f'\nThe {offset} bytes fetched so far stay in {part}; the next run resumes.' if offset else ''
        raise WeightsError(f'could not download the {name} weights: {url} is unreachable ({reason}).\n'
                           f'{_where_to_put(name, url, path)}{kept}') from e
    with response:
        if offset and response.status != 206:
            logger.info('%s: the server does not resume downloads; starting again', url)
            offset = 0
        total = _total_size(response, offset)
        with open(part, 'ab' if offset else 'wb') as f, \
                tqdm(total=total, initial=offset, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(path), disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as e:
                    raise WeightsError(f'download of {url} broke off after {f.tell()} bytes ({e}); '
                                       f'run again to resume from {part}') from e
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    received = os.path.getsize(part)
    if total is not None and received != total:
        raise WeightsError(f'download of {url} broke off at {received} of {total} bytes; '
                           f'run again to resume from {part}')
    if not _looks_like_checkpoint(part):
        with open(part, 'rb') as f:
            head = f.read(60)
        os.remove(part)
        raise WeightsError(f'{url} did not send a PyTorch checkpoint (it starts with {head!r}).\n'
                           f'{_where_to_put(name, url, path)}')
    os.replace(part, path)


def sha256_of(path: str) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _require_rmnet_checkpoint(path: str, url: str) -> None:
    """A WeightsError unless `path` loads as a checkpoint holding both networks' state dicts."""
    try:
        checkpoint = read_checkpoint(path)
        for key in NETWORK_KEYS:
            if key not in checkpoint:
                raise CheckpointError(f'{path}: has no {key!r} state dict')
            require_state_dict(checkpoint[key], f'{path} [{key}]')
    except CheckpointError as e:
        name = os.path.basename(path)
        raise WeightsError(f'{e}. It is not a usable copy of {name}: replace it with a complete '
                           f'download of {url or name} (or delete it to download again)') from e


def _record(path: str, record_path: str, url: str) -> None:
    size = os.path.getsize(path)
    record = {'file': os.path.basename(path), 'size': size, 'sha256': sha256_of(path), 'url': url}
    write_json(record_path, record, indent=2)
    logger.info('%s: recorded size %d and sha256 %s in %s', path, size, record['sha256'], record_path)


def check_record(path: str, url: str = '') -> None:
    """Compare `path` with its size/sha256 record <path>.json; make the record, if there is none,
    once the file loads as an RMNet checkpoint."""
    record_path = path + '.json'
    size = os.path.getsize(path)
    if not os.path.isfile(record_path):
        _require_rmnet_checkpoint(path, url)
        _record(path, record_path, url)
        return
    try:
        with open(record_path) as f:
            record = json.load(f)
        expected_size, expected_sha = int(record['size']), str(record['sha256'])
    except (OSError, ValueError, KeyError, TypeError) as e:
        _require_rmnet_checkpoint(path, url)
        logger.warning('%s: unreadable record of %s (%s), but the file loads as an RMNet checkpoint: '
                       'recording it afresh', record_path, path, e)
        _record(path, record_path, url)
        return
    found = (size, sha256_of(path)) if size == expected_size else (size, None)
    if found != (expected_size, expected_sha):
        what = (f'sha256 {found[1]}, recorded {expected_sha}' if found[1] is not None
                else f'size {size} bytes, recorded {expected_size}')
        _require_rmnet_checkpoint(path, url)
        raise WeightsError(f'{path}: {what} at its first use ({record_path}), but it loads as an RMNet '
                           f'checkpoint: it was replaced or changed since. If you replaced it on purpose, '
                           f'delete the record {record_path} (the weights file is kept) and run again.')
