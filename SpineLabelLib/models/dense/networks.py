"""Paper 002's two networks, sized for a 2-core CPU.

Stage 1 (`DetectionUNet`): a 3-D U-Net telling vertebral-column voxels from background on
patches. Stage 2 (`IdentificationUNet`): a 2-D U-Net on stacks of neighbouring sagittal slices
(as channels) regressing a continuous level index per pixel, with large anisotropic kernels at its
lowest level so that one output pixel sees (almost) the whole training crop along the spine.

Changes from the paper (and why), also stated in the model card:
  * stage 1 runs at 4 mm (paper: 1 mm) on 16x20x16-voxel patches = 64x80x64 mm, the paper's
    physical patch; widths 8-16-32 (paper: a full 3-D U-Net). A whole CT at 1 mm is ~100 M voxels:
    no 3-D network runs on that in seconds on one CPU thread, at 4 mm it is ~1.5 M.
  * stage 2 runs at 2 mm (paper: 1 mm) on 8 slices 2 mm apart (16 mm of the column; paper 8 mm)
    and 160x40 pixels = 320x80 mm, the paper's physical crop; three poolings, so the lowest level
    is 20x5 and its kernels are 21x5 (rows = superior-inferior): the paper's 5x20 (its axes are
    transposed to ours), padded symmetrically.
Everything else (same padding, batch normalisation, L1 on foreground only) follows the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..maskrcnn.network import CardConfig

FAMILY = "dense-two-stage"


@dataclass
class DenseConfig(CardConfig):
    """Everything that defines both networks and their input; stored in the model card."""

    family: str = FAMILY
    detect_spacing_mm: float = 4.0
    detect_widths: tuple[int, ...] = (8, 16, 32)
    detect_patch: tuple[int, int, int] = (16, 20, 16)        # (x, rows S-I, cols A-P) voxels
    identify_spacing_mm: float = 2.0
    identify_widths: tuple[int, ...] = (16, 32, 48, 64)
    identify_slices: int = 8                                 # sagittal slices stacked as channels
    identify_crop: tuple[int, int] = (160, 40)               # (rows S-I, cols A-P) pixels in training
    bottom_kernel: tuple[int, int] = (21, 5)                 # (rows, cols) at the lowest level
    batch_norm_momentum: float = 0.1

    @property
    def detect_divisor(self) -> int:
        return 2 ** (len(self.detect_widths) - 1)

    @property
    def identify_divisor(self) -> int:
        return 2 ** (len(self.identify_widths) - 1)


def _double_conv(dims: int, inputs: int, outputs: int, momentum: float, kernel=3) -> nn.Sequential:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
    padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return nn.Sequential(
        conv(inputs, outputs, kernel, padding=padding, bias=False), norm(outputs, momentum=momentum),
        nn.ReLU(inplace=True),
        conv(outputs, outputs, kernel, padding=padding, bias=False), norm(outputs, momentum=momentum),
        nn.ReLU(inplace=True))


class _UNet(nn.Module):
    """A U-Net in 2 or 3 dimensions with one output channel; ``bottom_kernel`` sets the lowest
    level's kernels (the paper's long-range context)."""

    def __init__(self, dims: int, in_channels: int, widths, momentum: float, bottom_kernel=3) -> None:
        super().__init__()
        self.dims = dims
        widths = list(widths)
        self.down = nn.ModuleList()
        channels = in_channels
        for n, width in enumerate(widths):
            kernel = bottom_kernel if n == len(widths) - 1 else 3
            self.down.append(_double_conv(dims, channels, width, momentum, kernel))
            channels = width
        self.pool = nn.MaxPool3d(2) if dims == 3 else nn.MaxPool2d(2)
        transpose = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        self.upsample, self.up = nn.ModuleList(), nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsample.append(transpose(channels, width, 2, stride=2))
            self.up.append(_double_conv(dims, 2 * width, width, momentum))
            channels = width
        self.head = (nn.Conv3d if dims == 3 else nn.Conv2d)(channels, 1, 1)

    def forward(self, x):
        from ..unet import encode_decode

        return encode_decode(self, x)


class DenseDetector(nn.Module):
    """Both stages in one module, so one safetensors file and one card hold the model.

    ``detection`` maps (N, 1, X, R, C) volumes at detect_spacing_mm to column logits;
    ``identification`` maps (N, identify_slices, R, C) slice stacks to a level index per pixel."""

    def __init__(self, config: DenseConfig) -> None:
        super().__init__()
        self.config = config
        self.detection = _UNet(3, 1, config.detect_widths, config.batch_norm_momentum)
        self.identification = _UNet(2, config.identify_slices, config.identify_widths,
                                    config.batch_norm_momentum, tuple(config.bottom_kernel))
        # Start the regression in the middle of the axis (T5-T6): the first steps then learn
        # the spread of the levels, not the offset from zero.
        nn.init.constant_(self.identification.head.bias, 12.0)


def build_network(config: DenseConfig | dict | None = None) -> DenseDetector:
    """The dense detector for a config (a `DenseConfig`, a card's architecture dict, or defaults)."""
    if isinstance(config, dict):
        config = DenseConfig.from_dict(config)
    return DenseDetector(config or DenseConfig())


# Stage 1 sees the case at twice stage 2's spacing; training and inference downsample alike.
def downsample_mean(array: np.ndarray) -> np.ndarray:
    """2x2x2 block means (odd sides padded by edge values): 2 mm -> 4 mm."""
    pad = [(0, s % 2) for s in array.shape]
    array = np.pad(array, pad, mode="edge")
    x, r, c = (s // 2 for s in array.shape)
    return array.reshape(x, 2, r, 2, c, 2).mean(axis=(1, 3, 5))
