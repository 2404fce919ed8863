"""utils.weights: download from a local HTTP server (Range resume), sha256 record, clear errors."""
import hashlib
import http.server
import io
import json
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
import torch

from utils import weights
from utils.weights import WeightsError, resolve_weights


def small_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({'rmnet': {'module.w': torch.arange(60000, dtype=torch.float32)},
                'tflownet': {'module.v': torch.ones(3)}}, buffer)
    return buffer.getvalue()


PAYLOAD = small_checkpoint()


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.body; honours 'Range: bytes=N-' unless server.ranges is False; server.slow
    sends it in pieces."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append(self.headers.get('Range'))
        body, start = server.body, 0
        match = re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range') or '')
        if match and server.ranges:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(body)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        else:
            self.send_response(200)
        self.send_header('Content-Length', str(len(body) - start))
        self.end_headers()
        sent = body[start:]
        if server.cut_after is not None:
            sent, server.cut_after = sent[:server.cut_after], None
            self.close_connection = True
        if server.slow:                  # in pieces, so that a second caller arrives meanwhile
            for begin in range(0, len(sent), 65536):
                self.wfile.write(sent[begin:begin + 65536])
                self.wfile.flush()
                time.sleep(0.02)
            return
        self.wfile.write(sent)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.body, httpd.ranges, httpd.cut_after, httpd.requests = PAYLOAD, True, None, []
    httpd.slow = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    url = f'http://127.0.0.1:{httpd.server_address[1]}/?fileName=RMNet-DAVIS.pth'
    monkeypatch.setitem(weights.PUBLISHED, 'davis', ('RMNet-DAVIS.pth', url))
    monkeypatch.setenv('RMNET_CACHE', str(tmp_path / 'cache'))
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def cached(tmp_path) -> str:
    return str(tmp_path / 'cache' / 'RMNet-DAVIS.pth')


def test_download_resumes_after_an_interruption(server, tmp_path):
    server.cut_after = 100_000
    with pytest.raises(WeightsError, match=r'broke off at 100000 of \d+ bytes; run again to resume'):
        resolve_weights('davis', progress=False)
    assert not os.path.exists(cached(tmp_path))
    assert os.path.getsize(cached(tmp_path) + '.part') == 100_000
    assert resolve_weights('DAVIS', progress=False) == cached(tmp_path)
    assert server.requests == [None, 'bytes=100000-']
    with open(cached(tmp_path), 'rb') as f:
        assert f.read() == PAYLOAD
    assert not os.path.exists(cached(tmp_path) + '.part')
    assert torch.load(cached(tmp_path), weights_only=True)['rmnet']['module.w'].shape == (60000,)


def test_first_download_is_recorded_and_later_uses_need_no_network(server, tmp_path):
    path = resolve_weights('davis', progress=False)
    with open(path + '.json') as f:
        record = json.load(f)
    assert record['size'] == len(PAYLOAD) and record['sha256'] == hashlib.sha256(PAYLOAD).hexdigest()
    server.shutdown()
    assert resolve_weights('davis', progress=False) == path
    assert len(server.requests) == 1


def test_changed_file_is_refused_with_a_way_out(server, tmp_path):
    path = resolve_weights('davis', progress=False)
    damaged = bytearray(PAYLOAD)
    damaged[len(damaged) // 2] ^= 0xFF             # in the tensor data: the file still loads
    with open(path, 'wb') as f:
        f.write(damaged)
    with pytest.raises(WeightsError, match='sha256') as error:
        resolve_weights('davis', progress=False)
    assert f'delete the record {path}.json (the weights file is kept)' in str(error.value)
    assert f'Delete {path}' not in str(error.value)
    with open(path, 'wb') as f:
        f.write(PAYLOAD[:len(PAYLOAD) // 2])
    with pytest.raises(WeightsError, match='not a readable PyTorch checkpoint') as error:
        resolve_weights('davis', progress=False)
    assert 'replace it with a complete download' in str(error.value)


def test_truncated_hand_placed_file_is_never_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv('RMNET_CACHE', str(tmp_path))
    path = tmp_path / 'RMNet-DAVIS.pth'
    path.write_bytes(PAYLOAD[:len(PAYLOAD) // 3])
    with pytest.raises(WeightsError, match='not a readable PyTorch checkpoint'):
        resolve_weights('davis', progress=False)
    assert not os.path.exists(str(path) + '.json')
    path.write_bytes(PAYLOAD)                      # the good file, placed over the broken one
    assert resolve_weights('davis', progress=False) == str(path)
    with open(str(path) + '.json') as f:
        assert json.load(f)['sha256'] == hashlib.sha256(PAYLOAD).hexdigest()


def test_a_checkpoint_without_both_networks_is_not_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv('RMNET_CACHE', str(tmp_path))
    torch.save({'rmnet': [1, 2, 3], 'tflownet': {'module.v': torch.ones(3)}}, tmp_path / 'RMNet-DAVIS.pth')
    with pytest.raises(WeightsError, match=r"\[rmnet\]: expected a state dict"):
        resolve_weights('davis', progress=False)
    assert os.listdir(tmp_path) == ['RMNet-DAVIS.pth']


def test_sha256_needs_no_python_3_11(tmp_path, monkeypatch):
    monkeypatch.delattr(weights.hashlib, 'file_digest', raising=False)
    (tmp_path / 'f').write_bytes(PAYLOAD)
    assert weights.sha256_of(str(tmp_path / 'f')) == hashlib.sha256(PAYLOAD).hexdigest()


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    server.ranges = False
    os.makedirs(tmp_path / 'cache')
    with open(cached(tmp_path) + '.part', 'wb') as f:
        f.write(b'stale bytes of another file')
    with open(resolve_weights('davis', progress=False), 'rb') as f:
        assert f.read() == PAYLOAD


def test_part_as_long_as_the_file_is_fetched_again(server, tmp_path):
    os.makedirs(tmp_path / 'cache')
    with open(cached(tmp_path) + '.part', 'wb') as f:
        f.write(b'\0' * len(PAYLOAD))
    with open(resolve_weights('davis', progress=False), 'rb') as f:
        assert f.read() == PAYLOAD
    assert server.requests == [f'bytes={len(PAYLOAD)}-', None]


def test_a_web_page_instead_of_weights_is_rejected(server, tmp_path):
    server.body = b'<html><body>File not found</body></html>'
    with pytest.raises(WeightsError, match='did not send a PyTorch checkpoint'):
        resolve_weights('davis', progress=False)
    assert [name for name in os.listdir(tmp_path / 'cache') if not name.endswith('.lock')] == []


def test_offline_message_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    url = f'http://127.0.0.1:{port}/?fileName=RMNet-YouTubeVOS.pth'
    monkeypatch.setitem(weights.PUBLISHED, 'youtubevos', ('RMNet-YouTubeVOS.pth', url))
    monkeypatch.setenv('RMNET_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(WeightsError) as error:
        resolve_weights('youtube-vos', progress=False)
    message = str(error.value)
    assert f'{url} is unreachable' in message
    assert f'save it as\n  {tmp_path / "cache" / "RMNet-YouTubeVOS.pth"}' in message


def test_hand_placed_file_is_recorded_on_first_use(tmp_path, monkeypatch):
    monkeypatch.setenv('RMNET_CACHE', str(tmp_path))
    with open(tmp_path / 'RMNet-DAVIS.pth', 'wb') as f:
        f.write(PAYLOAD)
    path = resolve_weights('davis', progress=False)
    assert path == str(tmp_path / 'RMNet-DAVIS.pth')
    with open(path + '.json') as f:
        assert json.load(f)['sha256'] == hashlib.sha256(PAYLOAD).hexdigest()


def test_plain_paths(tmp_path):
    own = tmp_path / 'mine.pth'
    own.write_bytes(PAYLOAD)
    assert resolve_weights(str(own)) == str(own)
    with pytest.raises(WeightsError, match=r'missing\.pth: no such weights file \(published weights by name'):
        resolve_weights(str(tmp_path / 'missing.pth'))
    with pytest.raises(WeightsError, match='is a folder'):
        resolve_weights(str(tmp_path))


def test_sha256_of_a_file_larger_than_one_read(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (3 << 20) + 5, dtype=np.uint8).tobytes()
    (tmp_path / 'big.bin').write_bytes(data)
    assert weights.sha256_of(str(tmp_path / 'big.bin')) == hashlib.sha256(data).hexdigest()


def test_processes_that_need_the_weights_at_once_download_them_once(server, tmp_path):
    """Two callers at the same time (as the ranks of a multi-GPU run): one download, one file."""
    server.slow = True
    results, errors = [], []

    def fetch():
        try:
            results.append(resolve_weights('davis', progress=False))
        except Exception as e:       # reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert results == [cached(tmp_path)] * 2
    assert server.requests == [None]
    with open(cached(tmp_path), 'rb') as f:
        assert f.read() == PAYLOAD
