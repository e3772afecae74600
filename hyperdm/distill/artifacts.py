"""The run directory: config, atomic checkpoints, the synthetic set, image grids, metrics, logs.

Layout of a run directory::

    config.json      every resolved setting, versions, seed
    checkpoint.pt    the latest good state (written atomically: temp file, fsync, rename)
    synthetic.pt     {'data': [[images, labels]], 'normalised': True, 'mean', 'std', ...}
                     images float32 [N, C, H, W], normalised as for training (the DM/DSA format)
    synthetic.png    the images as a grid, one row per class
    metrics.json     evaluations per iteration, loss curve, wall time, throughput, storage size
    poincare.png     real and synthetic features of a few classes on the Poincare disk
    run.log          the log of the run
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "atomic_write_bytes",
    "atomic_save",
    "write_json",
    "read_json",
    "RunDir",
    "load_synthetic",
    "to_uint8",
    "image_grid",
    "save_png",
    "storage_sizes",
]

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def to_uint8(images01: Tensor) -> Tensor:
    """Pixel-scale images in [0, 1] (clamped) to uint8, rounding to nearest."""
    return (images01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def image_grid(images01: Tensor, nrow: int, pad: int = 2) -> Tensor:
    """Tile ``[N, C, H, W]`` images in [0, 1] into one uint8 ``[H', W', C]`` grid, ``nrow`` images a row."""
    x = to_uint8(images01)
    n, c, h, w = x.shape
    ncol = max(1, int(nrow))
    nrows = (n + ncol - 1) // ncol
    grid = torch.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = x[i]
    return grid.permute(1, 2, 0)


def _png_bytes(hwc_uint8: Tensor) -> bytes:
    from PIL import Image

    arr = hwc_uint8.numpy()
    img = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_png(hwc_uint8: Tensor, path: PathLike) -> None:
    atomic_write_bytes(path, _png_bytes(hwc_uint8))


def storage_sizes(images01: Tensor) -> dict[str, int]:
    """Bytes needed to store the synthetic images: raw float32, uint8-quantised, and as PNG files (one per image)."""
    x = to_uint8(images01)
    png = sum(len(_png_bytes(img.permute(1, 2, 0))) for img in x)
    return {"float32_bytes": int(images01.numel() * 4), "uint8_bytes": int(x.numel()), "png_bytes": int(png)}


def load_synthetic(path: PathLike) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Read a synthetic set: a run directory or a ``.pt`` in the DM/DSA format ``{'data': [[images, labels]]}``.

    Returns ``(images, labels, meta)`` where ``meta`` holds the other keys (and ``config`` from a
    run directory's ``config.json`` when present). Uses the last ``[images, labels]`` pair, as
    the reference evaluation does.
    """
    path = Path(path)
    meta: dict[str, Any] = {}
    if path.is_dir():
        if (path / "config.json").exists():
            meta["config"] = read_json(path / "config.json")
        path = path / "synthetic.pt"
    if not path.exists():
        raise FileNotFoundError(f"no synthetic set at {path}; pass a run directory from `hyperdm distill` or a .pt file.")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict) or "data" not in obj or not obj["data"]:
        raise ValueError(f"{path} is not a synthetic set: expected a dict with 'data': [[images, labels]].")
    images, labels = obj["data"][-1][0], obj["data"][-1][1]
    images, labels = torch.as_tensor(images).float(), torch.as_tensor(labels).long()
    if images.dim() != 4 or labels.dim() != 1 or labels.numel() != images.shape[0]:
        raise ValueError(f"{path}: images must be [N, C, H, W] and labels [N]; got {tuple(images.shape)} and {tuple(labels.shape)}.")
    meta.update({k: v for k, v in obj.items() if k != "data"})
    return images, labels, meta


class RunDir:
    """One run's directory. All writes are atomic; nothing finished is ever overwritten by a partial file."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    config = property(lambda self: self.path / "config.json")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    synthetic = property(lambda self: self.path / "synthetic.pt")
    metrics = property(lambda self: self.path / "metrics.json")
    grid = property(lambda self: self.path / "synthetic.png")
    poincare = property(lambda self: self.path / "poincare.png")
    logfile = property(lambda self: self.path / "run.log")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_save(state, self.checkpoint)

    def load_checkpoint(self) -> Optional[dict[str, Any]]:
        if not self.checkpoint.exists():
            return None
        return torch.load(self.checkpoint, map_location="cpu", weights_only=False)

    def save_synthetic(self, images: Tensor, labels: Tensor, **meta: Any) -> None:
        obj = {"data": [[images.detach().float().cpu().clone(), labels.detach().long().cpu().clone()]], **meta}
        atomic_save(obj, self.synthetic)

    def save_grid(self, images01: Tensor, nrow: int) -> None:
        save_png(image_grid(images01, nrow), self.grid)

    @contextlib.contextmanager
    def logging_to_file(self, logger_name: str = "hyperdm") -> Iterator[None]:
        """Copy the ``hyperdm`` log to ``run.log`` (appending, so a resumed run keeps its history)."""
        handler = logging.FileHandler(self.logfile, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        lg = logging.getLogger(logger_name)
        old = lg.level
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
        lg.addHandler(handler)
        try:
            yield
        finally:
            lg.removeHandler(handler)
            lg.setLevel(old)
            handler.close()
