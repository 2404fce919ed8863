"""Published RMNet weights by name: downloaded once into a cache folder, checked on every use.

The cache folder is $RMNET_CACHE, or ~/.cache/rmnet. Downloads go to <file>.part and resume
from there (HTTP Range) after an interruption. No checksums were published, so the size and
sha256 of the first good copy are recorded in <file>.json and compared on later uses.
"""
import hashlib
import http.client
import json
import logging
import os
import re
import urllib.error
import urllib.request
from typing import Dict, Optional, Tuple

from tqdm import tqdm

from utils.checkpoint import CheckpointError
from utils.io import atomic_write

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
        logger.info('downloading the %s weights from %s to %s', key, url, path)
        download(url, path, name=key, progress=progress)
    check_record(path, url)
    return path


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
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def check_record(path: str, url: str = '') -> None:
    """Compare `path` with its size/sha256 record <path>.json, or make the record if there is none."""
    record_path = path + '.json'
    size = os.path.getsize(path)
    if not os.path.isfile(record_path):
        if not _looks_like_checkpoint(path):
            raise WeightsError(f'{path}: not a PyTorch checkpoint; delete it and run again to download it')
        record = {'file': os.path.basename(path), 'size': size, 'sha256': sha256_of(path), 'url': url}
        atomic_write(record_path, lambda temporary: _write_json(temporary, record))
        logger.info('%s: recorded size %d and sha256 %s in %s', path, size, record['sha256'], record_path)
        return
    try:
        with open(record_path) as f:
            record = json.load(f)
        expected_size, expected_sha = int(record['size']), str(record['sha256'])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f'{record_path}: unreadable record of {path} ({e}); delete both files '
                           f'and run again to download the weights afresh') from e
    found = (size, sha256_of(path)) if size == expected_size else (size, None)
    if found != (expected_size, expected_sha):
        what = (f'sha256 {found[1]}, recorded {expected_sha}' if found[1] is not None
                else f'size {size} bytes, recorded {expected_size}')
        raise WeightsError(f'{path}: {what} at its first download ({record_path}); the file is damaged '
                           f'or was replaced. Delete {path} and {record_path} and run again to download '
                           f'it afresh.')


def _write_json(path: str, content: dict) -> None:
    with open(path, 'w') as f:
        json.dump(content, f, indent=2)
