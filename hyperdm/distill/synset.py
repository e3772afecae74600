"""Synthetic-set formats: how stored images become training images.

``partition = 1``: each stored image is one training image (DM). ``partition = f`` (IDM's
"partition and expansion", IDC/Dance's multi-formation factor): each stored image holds an
``f x f`` grid of down-sampled sub-images; expansion cuts the grid and up-samples every cell back
to full size with bilinear interpolation, giving ``f*f`` training images per stored image, all
with the stored image's label. The format is saved in ``synthetic.pt`` (key ``partition``) so
``hyperdm evaluate`` expands a set exactly as its loop did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["expand", "pack"]


def expand(images: Tensor, labels: Tensor, partition: int = 1) -> tuple[Tensor, Tensor]:
    """``[N, C, H, W]`` stored images -> ``[f*f*N, C, H, W]`` training images (cells in row-major order, cell-major)."""
    f = int(partition)
    if f < 1:
        raise ValueError(f"partition must be a positive integer; got {partition!r}.")
    if f == 1:
        return images, labels
    _n, _c, h, w = images.shape
    if h % f or w % f:
        raise ValueError(
            f"images of size {h}x{w} cannot be split into a {f}x{f} grid; use a partition that divides both."
        )
    ch, cw = h // f, w // f
    cells = [images[:, :, i * ch : (i + 1) * ch, j * cw : (j + 1) * cw] for i in range(f) for j in range(f)]
    up = F.interpolate(torch.cat(cells), size=(h, w), mode="bilinear", align_corners=False)
    return up, labels.repeat(f * f)


def pack(images: Tensor, partition: int) -> Tensor:
    """Inverse initialisation: ``f*f`` groups of ``N`` full-size images -> ``N`` stored images (each cell down-sampled).

    ``images`` is ``[f*f*N, C, H, W]`` ordered like :func:`expand`'s output.
    """
    f = int(partition)
    if f == 1:
        return images
    total, c, h, w = images.shape
    if total % (f * f):
        raise ValueError(f"pack needs a multiple of {f * f} images; got {total}.")
    n = total // (f * f)
    small = F.interpolate(images, size=(h // f, w // f), mode="bilinear", align_corners=False, antialias=True)
    out = images.new_zeros(n, c, h, w)
    ch, cw = h // f, w // f
    for k in range(f * f):
        i, j = divmod(k, f)
        out[:, :, i * ch : (i + 1) * ch, j * cw : (j + 1) * cw] = small[k * n : (k + 1) * n]
    return out
