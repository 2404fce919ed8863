"""RMNet: a space-time memory network whose memory read is restricted to object regions.

The network knows nothing about videos: it offers the per-frame steps (`memorize`,
`query_region`, `encode_query`, `decode`, `aggregate`). The frame loop that drives them is
models.recurrence; `RMNet.forward` is the published entry point and runs that loop over a
whole clip.
"""
import functools
import operator
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import torchvision

from extensions.reg_att_map_generator import cuda_kernel_available, regional_attention_map
from models.object_manager import ObjectIndex
from models.query_encoding import QueryEncoding
from models.recurrence import FrameRecurrence
from utils.padding import Padding, pad_divide_by, unpad

FEATURE_STRIDE = 16
KEY_DIM = 128
VALUE_DIM = 512


class ResBlock(torch.nn.Module):
    """Pre-activation residual block with biased 3x3 convolutions."""

    def __init__(self, indim: int, outdim: Optional[int] = None, stride: int = 1):
        super().__init__()
        outdim = outdim or indim
        self.downsample = None
        if indim != outdim or stride != 1:
            self.downsample = torch.nn.Conv2d(indim, outdim, 3, padding=1, stride=stride)
        self.conv1 = torch.nn.Conv2d(indim, outdim, 3, padding=1, stride=stride)
        self.conv2 = torch.nn.Conv2d(outdim, outdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        if self.downsample is not None:
            x = self.downsample(x)
        return x + r


class _ResNetStem(torch.nn.Module):
    """ResNet-50 conv1/bn1/layer1-3 under the published names (res2, res3, res4)."""

    def __init__(self):
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.res2 = resnet.layer1  # 1/4, 256
        self.res3 = resnet.layer2  # 1/8, 512
        self.res4 = resnet.layer3  # 1/16, 1024

    def _stages(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(x)), kernel_size=3, stride=2, padding=1)
        r2 = self.res2(x)
        r3 = self.res3(r2)
        r4 = self.res4(r3)
        return r4, r3, r2


class EncoderMemory(_ResNetStem):
    """Frame + the object's mask + the other objects' masks -> r4 (1024 channels, 1/16)."""

    def __init__(self):
        super().__init__()
        self.conv1_m = torch.nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        self.conv1_o = torch.nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)

    def forward(self, frame: torch.Tensor, mask: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        return self.from_frame_features(self.conv1(frame), mask, others)

    def from_frame_features(self, frame_features: torch.Tensor, mask: torch.Tensor,
                            others: torch.Tensor) -> torch.Tensor:
        """The same with conv1(frame) given, so that the objects of a frame can share it."""
        x = frame_features + self.conv1_m(mask) + self.conv1_o(others)
        return self._stages(x)[0]


class EncoderQuery(_ResNetStem):
    """Frame -> r4 (1024, 1/16), r3 (512, 1/8), r2 (256, 1/4)."""

    def forward(self, frame: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._stages(self.conv1(frame))


class KeyValue(torch.nn.Module):
    def __init__(self, indim: int, keydim: int, valdim: int):
        super().__init__()
        self.key_conv = torch.nn.Conv2d(indim, keydim, 3, padding=1)
        self.value_conv = torch.nn.Conv2d(indim, valdim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.key_conv(x), self.value_conv(x)


class Refine(torch.nn.Module):
    def __init__(self, inplanes: int, planes: int):
        super().__init__()
        self.convFS = torch.nn.Conv2d(inplanes, planes, 3, padding=1)
        self.ResFS = ResBlock(planes, planes)
        self.ResMM = ResBlock(planes, planes)

    def skip(self, f: torch.Tensor) -> torch.Tensor:
        """The skip-feature branch; it depends on the frame only, not on the object."""
        return self.ResFS(self.convFS(f))

    def merge(self, s: torch.Tensor, pm: torch.Tensor) -> torch.Tensor:
        m = s + F.interpolate(pm, scale_factor=2, mode='bilinear', align_corners=False)
        return self.ResMM(m)

    def forward(self, f: torch.Tensor, pm: torch.Tensor) -> torch.Tensor:
        return self.merge(self.skip(f), pm)


class Decoder(torch.nn.Module):
    def __init__(self, mdim: int = 256):
        super().__init__()
        self.convFM = torch.nn.Conv2d(1024, mdim, 3, padding=1)
        self.ResMM = ResBlock(mdim, mdim)
        self.RF3 = Refine(512, mdim)
        self.RF2 = Refine(256, mdim)
        self.pred2 = torch.nn.Conv2d(mdim, 2, 3, padding=1)

    def skips(self, r3: torch.Tensor, r2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Skip features of a frame's r3 and r2, shared by all of its objects."""
        return self.RF3.skip(r3), self.RF2.skip(r2)

    def decode(self, x: torch.Tensor, s3: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """Memory read (N, 1024, h, w) and per-object skip features -> logits (N, 2, H, W)."""
        m4 = self.ResMM(self.convFM(x))
        m3 = self.RF3.merge(s3, m4)
        m2 = self.RF2.merge(s2, m3)
        p = self.pred2(F.relu(m2)).contiguous()
        return F.interpolate(p, scale_factor=4, mode='bilinear', align_corners=False)

    def forward(self, x: torch.Tensor, r3: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return self.decode(x, *self.skips(r3, r2))


def warp_backward(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample `image` (frame t-1) at p + flow(p); pixels whose source is not fully inside are 0."""
    batch, _, height, width = image.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=image.device, dtype=image.dtype),
                            torch.arange(width, device=image.device, dtype=image.dtype), indexing='ij')
    grid_x = 2.0 * (xs + flow[:, 0]) / max(width - 1, 1) - 1.0
    grid_y = 2.0 * (ys + flow[:, 1]) / max(height - 1, 1) - 1.0
    grid = torch.stack([grid_x, grid_y], dim=3)
    warped = F.grid_sample(image, grid, mode='bilinear', padding_mode='zeros', align_corners=True)
    valid = F.grid_sample(torch.ones_like(image[:, :1]), grid, mode='bilinear', padding_mode='zeros',
                          align_corners=True)
    return warped * (valid >= 0.9999).to(image.dtype)


def downsample_region(region: torch.Tensor) -> torch.Tensor:
    """A (.., H, W) map at image resolution -> feature resolution (nearest, as published)."""
    return F.interpolate(region, scale_factor=1 / FEATURE_STRIDE)


class RMNet(torch.nn.Module):
    """Regional memory network. Parameter names match the published checkpoints."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder_memory = EncoderMemory()
        self.encoder_query = EncoderQuery()
        self.kv_memory = KeyValue(1024, keydim=KEY_DIM, valdim=VALUE_DIM)
        self.kv_query = KeyValue(1024, keydim=KEY_DIM, valdim=VALUE_DIM)
        self.decoder = Decoder(256)
        self.region_threshold = float(cfg.NETWORK.REGION_PROB_THRESHOLD)
        self.region_min_pixels = int(cfg.NETWORK.REGION_MIN_PIXELS)
        self.region_margin = int(cfg.NETWORK.REGION_MARGIN)
        self.use_cuda_ops = bool(cfg.NETWORK.USE_CUDA_OPS)

    def load_ops(self) -> None:
        """Build or load the CUDA op of the region maps now (part of loading the model), not
        at the first frame of the first video."""
        if self.use_cuda_ops:
            cuda_kernel_available()

    def region_map(self, probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, K, H, W) probabilities -> 0/1 box maps (B, K, H, W) and boxes (B, K, 4)."""
        return regional_attention_map(probs, self.region_threshold, self.region_min_pixels,
                                      self.region_margin, use_cuda_kernel=self.use_cuda_ops)

    def memorize(self, frame: torch.Tensor, probs: torch.Tensor,
                 objects: ObjectIndex) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a frame with its estimated masks into per-object memory.

        frame (B, 3, H, W), probs (B, K, H, W) -> key (N, 128, h, w), value (N, 512, h, w) and
        region (N, h, w), the object's box on the padded frame at feature resolution (0/1).
        Key and value are not yet multiplied by the region.
        """
        (frame, probs), _ = pad_divide_by([frame, probs], FEATURE_STRIDE)
        in_use = objects.channel_in_use(probs.shape[1])
        in_use[:, 0] = False
        total = (probs * in_use[:, :, None, None].to(probs.dtype)).sum(dim=1)
        mask = probs[objects.batch, objects.channel]
        others = (total[objects.batch] - mask).clamp(0, 1)
        frame_features = self.encoder_memory.conv1(frame)[objects.batch]   # once per frame
        r4 = self.encoder_memory.from_frame_features(frame_features, mask[:, None], others[:, None])
        key, value = self.kv_memory(r4)
        region = downsample_region(self.region_map(probs)[0])
        return key, value, region[objects.batch, objects.channel]

    def query_region(self, prev_probs: torch.Tensor, flow: torch.Tensor,
                     objects: ObjectIndex) -> torch.Tensor:
        """Where each object is expected in frame t: its frame t-1 mask warped by the flow of
        frame t, boxed on the unpadded frame, padded, at feature resolution -> (N, h, w)."""
        expected = warp_backward(prev_probs.float(), flow.float())
        region = self.region_map(expected)[0]
        (region,), _ = pad_divide_by([region], FEATURE_STRIDE)
        return downsample_region(region)[objects.batch, objects.channel]

    def encode_query(self, frame: torch.Tensor) -> QueryEncoding:
        """(B, 3, H, W) -> the query's key and value and the decoder's skip features, computed
        once per frame and shared by its objects. Frames are independent here, so the frames of
        a clip can be encoded as one batch."""
        (frame,), pad = pad_divide_by([frame], FEATURE_STRIDE)
        r4, r3, r2 = self.encoder_query(frame)
        key, value = self.kv_query(r4)
        skip3, skip2 = self.decoder.skips(r3, r2)
        return QueryEncoding(key, value, skip3, skip2, pad)

    def decode(self, read: torch.Tensor, query: QueryEncoding, objects: ObjectIndex) -> torch.Tensor:
        """Memory read (N, 1024, h, w) and the query's skip features -> foreground probability
        (N, H, W)."""
        logits = self.decoder.decode(read, query.skip3[objects.batch], query.skip2[objects.batch])
        return F.softmax(logits.float(), dim=1)[:, 1]

    @staticmethod
    def aggregate(fg_probs: torch.Tensor, objects: ObjectIndex, n_channels: int,
                  pad: Padding) -> torch.Tensor:
        """Soft aggregation of per-object probabilities (N, H, W) -> logits (B, K, H, W), cropped."""
        batch = len(objects.counts)
        height, width = fg_probs.shape[-2:]
        probs = fg_probs.new_zeros(batch, n_channels, height, width)
        probs = probs.index_put((objects.batch, objects.channel), fg_probs)
        # the product over the objects as a chain of multiplications: torch.prod's gradient
        # counts zero factors on the host, a wait for the GPU in every training step
        background = functools.reduce(operator.mul, (1 - probs[:, 1:]).unbind(dim=1),
                                      torch.ones_like(probs[:, 0]))[:, None]
        probs = torch.cat([background, probs[:, 1:]], dim=1).clamp(1e-7, 1 - 1e-7)
        return unpad(torch.log(probs / (1 - probs)), pad)

    def forward(self, frames: torch.Tensor, masks: torch.Tensor, optical_flows: torch.Tensor,
                n_objects: torch.Tensor, memorize_every: int,
                objects: Optional[ObjectIndex] = None) -> torch.Tensor:
        """The published entry point: a whole clip at once.

        frames (B, T, 3, H, W), masks (B, T, K, H, W) one-hot (frame 0 is the given mask; later
        frames are read only where `n_objects` grows, for objects that appear), optical_flows
        (B, T, 2, H, W), n_objects (B, T) -> probabilities (B, T, K, H, W). objects: the index
        of the most objects of each clip on the device, when the caller holds it (else built
        from n_objects).
        """
        device = next(self.parameters()).device
        n_objects = torch.as_tensor(n_objects)
        counts = [int(n) for n in n_objects.max(dim=1).values.tolist()]
        recurrence = FrameRecurrence(self, counts, memorize_every)
        frames = frames.to(device)
        batch, n_frames = frames.shape[:2]
        first = masks[:, 0].to(device).float()
        outputs = [first]
        recurrence.start(frames[:, 0], first, objects)
        # the query side of every later frame at once (time-major: frame t is rows (t-1)B..tB-1)
        queries = self.encode_query(frames[:, 1:].transpose(0, 1).flatten(0, 1)) if n_frames > 1 else None
        for t in range(1, n_frames):
            appearing = bool((n_objects[:, t] != n_objects[:, t - 1]).any())
            new_masks = masks[:, t].to(device).float() if appearing else None
            query = queries.frames((t - 1) * batch, t * batch)
            outputs.append(recurrence.step(frames[:, t], optical_flows[:, t].to(device), new_masks, query))
        return torch.stack(outputs, dim=1)
