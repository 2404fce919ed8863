"""utils.torchvision_weights: torchvision's weights from the hub cache, downloaded once, checked."""
import email.message
import hashlib
import io
import os
import urllib.error

import pytest
import torch
from torchvision.models import ResNet50_Weights, Weights, WeightsEnum

from utils.torchvision_weights import MissingWeightsError, fetch_weights, hub_path

PAYLOAD = b'a small weights file'
PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


class TinyWeights(WeightsEnum):
    V1 = Weights(url=f'https://weights.example/tiny-{PREFIX}.pth', transforms=None, meta={})
    CORRUPT = Weights(url='https://weights.example/tiny-00000000.pth', transforms=None, meta={})


class FakeResponse(io.BytesIO):
    def info(self) -> email.message.Message:
        headers = email.message.Message()
        headers['Content-Length'] = str(len(self.getvalue()))
        return headers


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME; its hub cache is tmp_path/hub/checkpoints."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    return tmp_path


def serve(monkeypatch, answer):
    """Every download gets `answer` (bytes, or an exception to raise); returns the URLs asked."""
    asked = []

    def urlopen(request, *args, **kwargs):
        asked.append(request.full_url)
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer)
    monkeypatch.setattr(torch.hub, 'urlopen', urlopen)
    return asked


def test_the_hub_path_is_inside_torch_home(torch_home):
    assert hub_path(ResNet50_Weights.IMAGENET1K_V1) == str(torch_home / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth')


def test_a_cached_file_is_used_without_a_download(torch_home, monkeypatch):
    asked = serve(monkeypatch, urllib.error.URLError('offline'))
    path = hub_path(TinyWeights.V1)
    os.makedirs(os.path.dirname(path))
    with open(path, 'wb') as f:
        f.write(b'already here')
    assert fetch_weights(TinyWeights.V1) == path and asked == []


def test_a_missing_file_is_downloaded_and_its_hash_checked(torch_home, monkeypatch):
    asked = serve(monkeypatch, PAYLOAD)
    path = fetch_weights(TinyWeights.V1, progress=False)
    assert asked == [TinyWeights.V1.url] and path == hub_path(TinyWeights.V1)
    with open(path, 'rb') as f:
        assert f.read() == PAYLOAD
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def test_a_download_with_another_hash_leaves_no_file(torch_home, monkeypatch):
    serve(monkeypatch, PAYLOAD)
    with pytest.raises(MissingWeightsError, match='corrupt.*invalid hash value'):
        fetch_weights(TinyWeights.CORRUPT, progress=False)
    assert os.listdir(torch_home / 'hub' / 'checkpoints') == []


def test_offline_the_error_names_the_url_and_the_path(torch_home, monkeypatch):
    serve(monkeypatch, urllib.error.URLError('Temporary failure in name resolution'))
    path = hub_path(ResNet50_Weights.IMAGENET1K_V1)
    with pytest.raises(MissingWeightsError) as error:
        fetch_weights(ResNet50_Weights.IMAGENET1K_V1)
    message = str(error.value)
    assert '\n' not in message and ResNet50_Weights.IMAGENET1K_V1.url in message and path in message
    assert 'name resolution' in message
    assert not os.path.exists(path)
