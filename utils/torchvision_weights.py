"""torchvision's pretrained weights (ImageNet ResNet-50, RAFT) in the torch hub cache.

A file already in the cache ($TORCH_HOME/hub/checkpoints) is used as it is; otherwise it is
downloaded there by torch.hub, with a progress bar, through a temporary file that is moved
into place only after its sha256 matched the prefix in its name.
"""
import os
import urllib.error
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights that are not in the cache and cannot be downloaded; the message names
    the URL and the path where the file goes."""


def hub_path(weights: WeightsEnum) -> str:
    """Where torch hub keeps the file of `weights`."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urlparse(weights.url).path))


def fetch_weights(weights: WeightsEnum, progress: bool = True) -> str:
    """The cached file of `weights`, downloaded first when it is not there yet."""
    path = hub_path(weights)
    if os.path.isfile(path):
        return path
    match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(weights.url, path, match.group(1) if match else None, progress=progress)
    except urllib.error.URLError as e:
        raise MissingWeightsError(f'cannot download the {weights} weights from {weights.url} ({e.reason}); '
                                  f'put that file at {path} (or set TORCH_HOME to a folder whose '
                                  f'hub/checkpoints has it) and run again') from e
    except RuntimeError as e:        # torch.hub: the downloaded file's sha256 does not match
        raise MissingWeightsError(f'the download of {weights.url} is corrupt ({e}); run again, or put '
                                  f'a good copy at {path}') from e
    except OSError as e:
        raise MissingWeightsError(f'cannot download the {weights} weights from {weights.url} to {path} '
                                  f'({e}); put that file there by hand and run again') from e
    return path
