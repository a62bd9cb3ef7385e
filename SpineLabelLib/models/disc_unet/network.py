"""The disc U-Net: the body U-Net's architecture (`body_unet.network.BodyUNet`) on a 48 x 64 mm crop
between two bodies, smaller (the crop holds one disc and the end plates around it)."""
from __future__ import annotations

from dataclasses import dataclass

from ..body_unet.network import BodyUNet, SegmenterConfig

FAMILY = "disc-unet"


@dataclass
class DiscConfig(SegmenterConfig):
    family: str = FAMILY
    widths: tuple[int, ...] = (16, 32, 64, 128)
    crop_rows: int = 48            # superior-inferior, mm at spacing_mm 1
    crop_cols: int = 64            # anterior-posterior
    lateral_margin_mm: float = 3.0  # slices beyond the bodies' lateral edges
    train_size: int = 0            # unused (crops are crop_rows x crop_cols)


def build_model(config: DiscConfig | None = None) -> BodyUNet:
    return BodyUNet(config or DiscConfig())
