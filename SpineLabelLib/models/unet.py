"""The U-Net pass both U-Net families share: encoder blocks with pooling, decoder blocks on the
upsampled features concatenated with the matching skip, a 1x1 head giving one logit map."""
from __future__ import annotations


def encode_decode(net, x):
    """``net`` holds ``down`` and ``up`` block lists, ``upsample`` layers, ``pool`` and ``head``."""
    import torch

    skips = []
    for n, block in enumerate(net.down):
        x = block(x if n == 0 else net.pool(x))
        skips.append(x)
    skips.pop()
    for upsample, block in zip(net.upsample, net.up):
        x = block(torch.cat([upsample(x), skips.pop()], dim=1))
    return net.head(x)[:, 0]
