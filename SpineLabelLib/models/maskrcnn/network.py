"""A narrow Mask R-CNN for vertebral bodies on sagittal slices (papers 000, 001, 004).

torchvision's `MaskRCNN`, built from scratch (nothing is downloaded): a small ResNet with
BasicBlocks and an FPN, slim box and mask heads, anchors sized for bodies of 8-60 px at 1.5 mm.
Classes are background + every level of `anatomy.ORDER`, so each instance carries a level
probability vector; the level names are decided later by the order-respecting assignment.
Images are never resized by the model: the input spacing is fixed by resampling beforehand,
so a pixel means the same millimetres in training and at inference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ...core import anatomy

#: Class index n (1-based) is anatomy.ORDER[n - 1]; 0 is background.
CLASS_NAMES: tuple[str, ...] = ("background", *anatomy.ORDER)


class CardConfig:
    """A network configuration stored in a model card: to JSON and back (lists become tuples)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, value in known.items():
            if isinstance(value, list):
                known[key] = tuple(value)
        return cls(**known)


@dataclass
class DetectorConfig(CardConfig):
    """Everything that defines the network; stored in the model card so weights reload exactly."""

    widths: tuple[int, ...] = (32, 64, 128, 256)     # channels of ResNet stages C2..C5
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    fpn_channels: int = 64
    in_channels: int = 3                             # slices n-d, n, n+d
    num_classes: int = len(CLASS_NAMES)
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_head_dim: int = 256
    mask_head_channels: int = 64
    rpn_pre_nms_train: int = 300
    rpn_post_nms_train: int = 100
    rpn_pre_nms_test: int = 200
    rpn_post_nms_test: int = 50
    box_batch_per_image: int = 128
    box_detections_per_img: int = 40
    box_score_thresh: float = 0.05
    spacing_mm: float = 1.25                         # canonical isotropic spacing of the input
    slice_offset: int = 2                            # neighbour slices stacked as channels (voxels)
    train_size: int = 320                            # training crops are train_size^2 pixels


class SmallResNet(nn.Module):
    """A ResNet with narrow stages; children run in order so IntermediateLayerGetter can tap them."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem
        for n, (width, count) in enumerate(zip(widths, blocks), start=1):
            stride = 1 if n == 1 else 2
            layers = []
            for b in range(count):
                down = None
                if b == 0 and (stride != 1 or channels != width):
                    down = nn.Sequential(nn.Conv2d(channels, width, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(width))
                layers.append(BasicBlock(channels, width, stride if b == 0 else 1, down))
                channels = width
            setattr(self, f"layer{n}", nn.Sequential(*layers))


def _no_resize_transform(min_size: int):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class FixedGridTransform(GeneralizedRCNNTransform):
        def resize(self, image, target=None):
            return image, target

    # Intensities are already 0..1 per volume; mean/std centre them around zero.
    return FixedGridTransform(min_size, min_size, image_mean=[0.5] * 3, image_std=[0.25] * 3,
                              size_divisible=32)


def build_model(config: DetectorConfig | None = None) -> nn.Module:
    """A randomly initialised Mask R-CNN with the given configuration (no weights downloaded)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    config = config or DetectorConfig()
    body = SmallResNet(config.in_channels, config.widths, config.blocks)
    backbone = BackboneWithFPN(body, {f"layer{n}": str(n - 1) for n in range(1, len(config.widths) + 1)},
                               list(config.widths), config.fpn_channels, extra_blocks=LastLevelMaxPool())
    levels = len(config.widths) + 1
    sizes = tuple((s,) for s in config.anchor_sizes[:levels])
    anchors = AnchorGenerator(sizes, (tuple(config.aspect_ratios),) * len(sizes))
    feature_names = [str(n) for n in range(len(config.widths))]
    box_pool = MultiScaleRoIAlign(feature_names, 7, 2)
    mask_pool = MultiScaleRoIAlign(feature_names, 14, 2)
    c = config.fpn_channels
    model = MaskRCNN(
        backbone, num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_train, rpn_post_nms_top_n_train=config.rpn_post_nms_train,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_test, rpn_post_nms_top_n_test=config.rpn_post_nms_test,
        box_roi_pool=box_pool, box_head=TwoMLPHead(c * 7 * 7, config.box_head_dim),
        box_predictor=FastRCNNPredictor(config.box_head_dim, config.num_classes),
        box_batch_size_per_image=config.box_batch_per_image,
        box_detections_per_img=config.box_detections_per_img, box_score_thresh=config.box_score_thresh,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(c, (config.mask_head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(config.mask_head_channels, config.mask_head_channels,
                                         config.num_classes),
    )
    model.transform = _no_resize_transform(config.train_size)
    model.config = config
    return model


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
