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

Files are read safely: every ``.pt`` goes through :func:`load_torch_file`, which checks the
container (empty, truncated, not a PyTorch file, a CRC-32 mismatch in any record) and then calls
``torch.load(weights_only=True)``, so a file can hold tensors, numbers, strings and lists / dicts /
tuples of them, nothing that runs code when unpickled. Our own checkpoints are read the same way.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "UnsafeFileError",
    "CorruptFileError",
    "load_torch_file",
    "output_path",
    "check_writable",
    "NotWritableError",
    "check_new_files",
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
PathLike = str | os.PathLike


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class UnsafeFileError(ValueError):
    """A file holds Python objects beyond tensors and plain containers; it was not loaded (nothing in it ran)."""


class RunLockedError(FileExistsError):
    """Another live process holds the run directory's lock (two writers would overwrite each other's checkpoints)."""


class CorruptFileError(ValueError):
    """A file is empty, truncated, damaged (a CRC-32 mismatch) or not in the format expected; it was not loaded."""


#: how ``torch.save``'s legacy (pre-1.6, non-zip) format begins: the pickled magic number
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _check_torch_container(path: Path, what: str) -> None:
    """Raise :class:`CorruptFileError` unless ``path`` looks like a whole ``torch.save`` file.

    Cheap and runs nothing: the size, the first bytes (a zip archive or the legacy magic number),
    the zip's end record (missing when the file was cut short) and the CRC-32 of every record,
    which ``torch.load`` does not check.
    """
    size = path.stat().st_size
    if size == 0:
        raise CorruptFileError(f"{path} is empty (0 bytes), not {what}.")
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_MAGIC))
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return
    if not head.startswith(b"PK\x03\x04"):
        raise CorruptFileError(
            f"{path} is not a PyTorch file (torch.save writes a zip archive; this file starts "
            f"with {head[:8]!r}); expected {what}."
        )
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CorruptFileError(f"{path} is truncated or damaged ({e}); it cannot be read as {what}.") from None
    if bad is not None:
        raise CorruptFileError(
            f"{path} is damaged: record {bad!r} fails its CRC-32 check; it cannot be read as {what}."
        )


def load_torch_file(path: PathLike, *, what: str = "a PyTorch file") -> Any:
    """``torch.load`` a file we may not have written, safely: container checks, then ``weights_only=True``.

    Tensors, numbers, strings, ``None`` and lists / tuples / dicts of them load; anything else (a class,
    a function such as ``os.system`` that a pickle would call) is refused with :class:`UnsafeFileError`
    naming it, and nothing in the file runs. Empty, truncated, damaged or foreign files raise
    :class:`CorruptFileError`. ``what`` names the expected content in the messages.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist.")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a directory, not {what}", str(path))
    _check_torch_container(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", text)
        found = f"the Python object {m.group(1)}" if m else "pickle instructions beyond tensors and plain containers"
        raise UnsafeFileError(
            f"refused to load {path}: it holds {found}, and unpickling it could run code. hyperdm loads only "
            "tensors, numbers, strings and lists/dicts of them (torch.load with weights_only=True). Use a copy "
            "from a source you trust, saved as plain tensors."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorruptFileError(f"{path} could not be read as {what} ({reason}).") from None


def output_path(path: PathLike, ext: str, *, strip: tuple[str, ...] = ()) -> Path:
    """``path`` with the extension ``ext`` added, keeping every character the user typed.

    ``Path.with_suffix`` would turn ``kept_0.01`` into ``kept_0.ext`` (and ``kept_0.5`` into the same
    name). A trailing extension listed in ``strip`` (e.g. ``.npy`` of ``kept.npy``) is replaced.
    """
    path = Path(path)
    name = path.name
    for s in strip:
        if name.endswith(s) and len(name) > len(s):
            name = name[: -len(s)]
            break
    return path.with_name(name + ext)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


class NotWritableError(OSError):
    """An output directory cannot receive files (read-only file system, permissions); the message names the fix."""


def check_writable(path: PathLike, *, what: str = "--out", fix: str | None = None) -> None:
    """Raise :class:`NotWritableError` naming the fix unless a file can be created in directory ``path`` (created
    later, with its parents, by the first write; this check leaves nothing behind). ``fix``: the advice given
    (default: choose ``what`` elsewhere)."""
    path = Path(path)
    base = _nearest_existing(path)
    if not base.is_dir():
        raise NotWritableError(f"{what} {path}: {base} is a file, not a directory; choose another {what}.")
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".hyperdm-write-check-", suffix=".tmp")
    except OSError as e:
        if fix is None:
            fixes: dict[int | None, str] = {
                errno.EROFS: f"the file system is read-only; choose {what} on a writable disk",
                errno.ENOSPC: f"the disk is full; free some space or choose {what} on another disk",
            }
            fix = fixes.get(e.errno, f"choose {what} in a directory you may write to")
        raise NotWritableError(f"{what} {path}: cannot create files in {base} ({e.strerror}); {fix}.") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_new_files(paths: list[Path], *, overwrite: bool, what: str = "--out") -> None:
    """Refuse (``FileExistsError``) to replace existing results unless ``overwrite``; then :func:`check_writable`."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            f"pass --overwrite to replace {'it' if len(existing) == 1 else 'them'}, or choose another {what}."
        )
    for p in paths:
        if p.is_dir():
            raise IsADirectoryError(errno.EISDIR, f"{p} is a directory; choose another {what}")
    for parent in sorted({p.parent for p in paths}):
        check_writable(parent, what=what)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader (or a crash) sees the old file or the new one, never half.

    The data go to a temporary file beside ``path`` (fsync'ed), which is then renamed over it. On any
    failure (a full disk, a read-only file system) the temporary file is removed, ``path`` is left as
    it was, and the ``OSError`` raised names ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename != str(path):
            raise type(e)(e.errno, e.strerror or str(e), str(path)) from e
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
        raise FileNotFoundError(
            f"no synthetic set at {path}; pass a run directory from `hyperdm distill` or a .pt file."
        )
    obj = load_torch_file(path, what="a synthetic set ({'data': [[images, labels]]})")
    data = obj.get("data") if isinstance(obj, dict) else None
    last = data[-1] if isinstance(data, (list, tuple)) and data else None
    if not isinstance(last, (list, tuple)) or len(last) != 2:
        raise ValueError(f"{path} is not a synthetic set: expected a dict with 'data': [[images, labels]].")
    images, labels = last
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise ValueError(
            f"{path}: 'data' must hold tensors [images, labels]; got {type(images).__name__} and "
            f"{type(labels).__name__}."
        )
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError(f"{path}: labels must be whole class numbers; got fractional values.")
    images, labels = images.float(), labels.long()
    if images.dim() != 4 or labels.dim() != 1 or labels.numel() != images.shape[0]:
        raise ValueError(
            f"{path}: images must be [N, C, H, W] and labels [N]; got {tuple(images.shape)} and {tuple(labels.shape)}."
        )
    meta.update({k: v for k, v in obj.items() if k != "data"})
    return images, labels, meta


class _RunLogHandler(logging.FileHandler):
    """The run.log handler: a failed write (a full disk) is reported once, in one line.

    Not as a traceback per record.
    """

    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:  # logging.Handler's hook, hence its name
        if not self._warned:
            self._warned = True
            import sys

            exc = sys.exc_info()[1]
            sys.stderr.write(f"hyperdm: could not write {self.baseFilename} ({exc}); the console log continues\n")


class RunDir:
    """One run's directory. All writes are atomic; nothing finished is ever overwritten by a partial file.

    The directory itself is created by the first write, so a run that fails its checks leaves nothing.
    """

    #: every file a run writes (``--overwrite`` removes exactly these)
    ARTIFACTS = (
        "config.json",
        "checkpoint.pt",
        "synthetic.pt",
        "metrics.json",
        "synthetic.png",
        "poincare.png",
        "loss.png",
        "run.log",
    )

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    synthetic = property(lambda self: self.path / "synthetic.pt")
    metrics = property(lambda self: self.path / "metrics.json")
    grid = property(lambda self: self.path / "synthetic.png")
    poincare = property(lambda self: self.path / "poincare.png")
    logfile = property(lambda self: self.path / "run.log")

    #: the lock file of a run directory (``flock``): one writing process at a time
    LOCK = ".hyperdm.lock"

    @contextlib.contextmanager
    def lock(self, command: str = "distill") -> Iterator[None]:
        """Hold this directory's lock while the block runs: one writing process per run directory.

        An exclusive ``fcntl.flock`` on ``.hyperdm.lock`` (the standard library's file locking; the kernel
        releases it when its process dies, however it dies). The file records the holder's PID, host and start
        time, so a refusal can name them; a lock file whose holder is gone (a killed process) is taken over with a
        warning. Creates the directory. Raises :class:`RunLockedError` when a live process holds the lock.
        """
        import fcntl
        import socket
        import time

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = _lock_holder(fd)
                raise RunLockedError(
                    f"{self.path} is in use by another hyperdm process ({holder}); two processes writing one run "
                    "would overwrite each other's checkpoints. Wait for it to finish, stop it, or choose another --out."
                ) from None
            left = _lock_holder(fd, default="")
            if left:
                log.warning("%s: took over the lock left by %s, which is no longer running", self.path, left)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps({**info, "command": command}) + "\n").encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # released: no holder to name (the file stays, so that no two lock two files)
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def existing(self) -> list[str]:
        """The names of the run files already in the directory."""
        return [n for n in self.ARTIFACTS if (self.path / n).exists()]

    def stale_temps(self) -> list[Path]:
        """Temporary files an interrupted atomic write left (``.<artifact>.*.tmp``; a SIGKILL cannot remove them)."""
        if not self.path.is_dir():
            return []
        return [p for n in self.ARTIFACTS for p in self.path.glob(f".{n}.*.tmp")]

    def refusal(self, *, resume: bool, overwrite: bool) -> str | None:
        """Why this directory may not receive the run (``None``: it may). Reads nothing but names."""
        if self.path.exists() and not self.path.is_dir():
            return f"--out {self.path} is a file, not a directory; choose another --out."
        have = self.existing()
        if not have or overwrite:
            return None
        if resume:
            if "checkpoint.pt" in have or "synthetic.pt" not in have:
                return None
            return (
                f"{self.path} holds a finished run (synthetic.pt) but no checkpoint.pt to resume from; pass "
                "--overwrite to start it over, or choose another --out."
            )
        return (
            f"{self.path} already holds a run ({', '.join(have)}); pass --resume to continue it, --overwrite to "
            "replace it, or choose another --out."
        )

    def clear(self) -> None:
        """Remove the run files (and stale temporary files) for ``--overwrite``; nothing else is touched."""
        for n in self.existing():
            (self.path / n).unlink()
        self.remove_stale_temps()

    def remove_stale_temps(self) -> None:
        for p in self.stale_temps():
            with contextlib.suppress(OSError):
                p.unlink()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_save(state, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint (loaded with ``weights_only=True`` after the container checks), or None if there is none.

        A damaged or foreign file raises :class:`CorruptFileError` saying how to go on.
        """
        if not self.checkpoint.exists():
            return None
        try:
            state = load_torch_file(self.checkpoint, what="a hyperdm checkpoint")
        except (CorruptFileError, UnsafeFileError) as e:
            raise type(e)(f"{e} {self.damaged_checkpoint_fix()}") from None
        if not isinstance(state, dict):
            raise CorruptFileError(
                f"{self.checkpoint} is not a hyperdm checkpoint (it holds a {type(state).__name__}, "
                f"not a dict). {self.damaged_checkpoint_fix()}"
            )
        return state

    def check_checkpoint(self) -> None:
        """The cheap part of :meth:`load_checkpoint`, to fail before any work.

        Checks size, format and CRC-32; nothing is unpickled.
        """
        try:
            _check_torch_container(self.checkpoint, "a hyperdm checkpoint")
        except CorruptFileError as e:
            raise CorruptFileError(f"{e} {self.damaged_checkpoint_fix()}") from None

    def damaged_checkpoint_fix(self) -> str:
        return (
            f"To continue, delete it (rm {self.checkpoint}) and run with --overwrite to start over, or keep it and "
            "pass --out with another directory."
        )

    def save_synthetic(self, images: Tensor, labels: Tensor, **meta: Any) -> None:
        obj = {"data": [[images.detach().float().cpu().clone(), labels.detach().long().cpu().clone()]], **meta}
        atomic_save(obj, self.synthetic)

    def save_grid(self, images01: Tensor, nrow: int) -> None:
        save_png(image_grid(images01, nrow), self.grid)

    @contextlib.contextmanager
    def logging_to_file(self, logger_name: str = "hyperdm") -> Iterator[None]:
        """Copy the ``hyperdm`` log to ``run.log`` (appending, so a resumed run keeps its history)."""
        self.path.mkdir(parents=True, exist_ok=True)
        handler = _RunLogHandler(self.logfile, mode="a")
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


def _lock_holder(fd: int, default: str = "a process whose PID the lock file does not name") -> str:
    """``PID n on host h (since t, hyperdm distill)`` from a lock file's record, or ``default`` when it has none."""
    try:
        rec = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        rec = None
    if not isinstance(rec, dict) or "pid" not in rec:
        return default
    since, command = rec.get("since", "?"), rec.get("command", "?")
    return f"PID {rec['pid']} on host {rec.get('host', '?')}, since {since}, hyperdm {command}"
