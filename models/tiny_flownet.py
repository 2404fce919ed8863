"""TinyFlowNet: the small FlowNetS-like network that predicts the flow used for query regions."""
from typing import Optional

import torch
import torch.nn.functional as F

from utils.padding import pad_divide_by, unpad


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                        padding=(kernel_size - 1) // 2, bias=True),
        torch.nn.LeakyReLU(0.1, inplace=True))


def _deconv(in_channels: int, out_channels: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=True),
        torch.nn.LeakyReLU(0.1, inplace=True))


def _upsample_flow() -> torch.nn.ConvTranspose2d:
    return torch.nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1, bias=False)


class TinyFlowNet(torch.nn.Module):
    """flow of frame t = f(frame t, frame t-1): pixel p of frame t came from p + flow in frame t-1."""

    def __init__(self, cfg: Optional[dict] = None):
        super().__init__()
        self.conv1 = _conv(6, 64, 7, stride=2)
        self.conv2 = _conv(64, 128, 5, stride=2)
        self.conv3 = _conv(128, 256, 5, stride=2)
        self.conv3_1 = _conv(256, 256, 3)
        self.conv4 = _conv(256, 512, 3, stride=2)
        self.conv4_1 = _conv(512, 512, 3)
        self.conv5 = _conv(512, 512, 3, stride=2)
        self.conv5_1 = _conv(512, 512, 3)

        self.deconv4 = _deconv(512, 256)
        self.deconv3 = _deconv(770, 128)
        self.deconv2 = _deconv(386, 64)

        self.predict_flow5 = torch.nn.Conv2d(512, 2, 3, padding=1, bias=True)
        self.predict_flow4 = torch.nn.Conv2d(770, 2, 3, padding=1, bias=True)
        self.predict_flow3 = torch.nn.Conv2d(386, 2, 3, padding=1, bias=True)
        self.predict_flow2 = torch.nn.Conv2d(194, 2, 3, padding=1, bias=True)

        self.upsampled_flow5_to_4 = _upsample_flow()
        self.upsampled_flow4_to_3 = _upsample_flow()
        self.upsampled_flow3_to_2 = _upsample_flow()

    def step(self, frame: torch.Tensor, prev_frame: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised frames t and t-1 -> (B, 2, H, W) flow of frame t."""
        (frame, prev_frame), pad = pad_divide_by([frame, prev_frame], 64)
        frame = F.interpolate(frame, scale_factor=0.5, mode='bilinear', align_corners=False)
        prev_frame = F.interpolate(prev_frame, scale_factor=0.5, mode='bilinear', align_corners=False)

        out_conv2 = self.conv2(self.conv1(torch.cat([frame, prev_frame], dim=1)))
        out_conv3 = self.conv3_1(self.conv3(out_conv2))
        out_conv4 = self.conv4_1(self.conv4(out_conv3))
        out_conv5 = self.conv5_1(self.conv5(out_conv4))

        flow5 = self.predict_flow5(out_conv5)
        concat4 = torch.cat([out_conv4, self.deconv4(out_conv5), self.upsampled_flow5_to_4(flow5)], dim=1)
        flow4 = self.predict_flow4(concat4)
        concat3 = torch.cat([out_conv3, self.deconv3(concat4), self.upsampled_flow4_to_3(flow4)], dim=1)
        flow3 = self.predict_flow3(concat3)
        concat2 = torch.cat([out_conv2, self.deconv2(concat3), self.upsampled_flow3_to_2(flow3)], dim=1)
        flow2 = self.predict_flow2(concat2)

        flow = F.interpolate(flow2, scale_factor=8, mode='bilinear', align_corners=False)
        return unpad(flow, pad)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) normalised frames -> (B, T, 2, H, W) flows; the flow of frame 0 is zero."""
        batch, n_frames, _, height, width = frames.shape
        flows = [frames.new_zeros(batch, 2, height, width)]
        for t in range(1, n_frames):
            flows.append(self.step(frames[:, t], frames[:, t - 1]))
        return torch.stack(flows, dim=1)
