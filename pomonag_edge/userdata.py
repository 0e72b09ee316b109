"""The user's own images: an image folder or an ``.npz``, resized to the space's input, split by seed.

Layouts: ``DIR/<class>/*.png|jpg|jpeg`` (class names are the folder names, sorted; 16-bit grayscale PNGs are
scaled by their own range, not clipped to 8 bits), or a file ``.npz`` with
``x`` (n images: (n, h, w), (n, h, w, c) or (n, c, h, w), c in 1 or 3; uint8 0..255 or floats 0..1) and
``y`` (n integer labels). Grayscale becomes 3 channels; every image is resized to the space's square input.
The validation split is stratified and fixed by the seed; per-channel mean and std come from the training
split only and are recorded in ``source``, so a net trained here can be fed the same way later.
Every mistake in the data is one ``UserError`` line naming what and where.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MissingDependencyError, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VAL_FRACTION = 0.2
MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # Pillow's limit for untrusted images (89 M): larger are refused
MAX_ASPECT = 4.0  # an image more than 4x wider than tall (or the reverse) cannot be squeezed to a square honestly


class DataError(UserError):
    """User data that cannot be read or used: missing, empty, unreadable, or of shapes we cannot handle."""


@dataclass
class UserData:
    """A loaded, resized, normalised and split task. ``x_*``: float32 (n, 3, hw, hw); ``y_*``: int64 (n,)."""

    name: str
    classes: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    source: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_hw(self) -> int:
        return int(self.x_train.shape[-1])

    def __str__(self) -> str:
        return self.name


def data_name(path: str | os.PathLike) -> str:
    """The task's name a data folder or file gives by default: its name without the suffix."""
    path = Path(path)
    return path.stem or path.name


def load_user_data(path: str | os.PathLike, input_hw: int = 32, seed: int = 0,
                   val_fraction: float = VAL_FRACTION) -> UserData:
    """Read ``path`` (an image folder or an .npz), resize to ``input_hw``, split by ``seed``, normalise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data {path} does not exist (expected a folder DIR/<class>/*.png|jpg or an .npz with x, y)")
    if path.is_dir():
        images, labels, classes, kind = *_read_folder(path, input_hw), "image folder"
    elif path.suffix.lower() == ".npz":
        images, labels, classes = _read_npz(path, input_hw)
        kind = "npz"
    else:
        raise DataError(f"data {path} is neither a folder of class folders nor an .npz file")
    counts = np.bincount(labels, minlength=len(classes))
    if len(classes) < 2:
        raise DataError(f"data {path} has {len(classes)} class(es): classification needs at least 2")
    for name, count in zip(classes, counts):
        if count < 2:
            raise DataError(f"class {name!r} in {path} has {count} image(s): each class needs at least 2 "
                            "(one for validation)")
    train, val = stratified_split(labels, seed, val_fraction)
    x_train, x_val = images[train], images[val]
    mean = x_train.mean(axis=(0, 2, 3))
    std = x_train.std(axis=(0, 2, 3))
    std = np.where(std > 1e-6, std, 1.0)  # a constant channel stays as it is
    norm = lambda x: ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)  # noqa: E731
    source = {
        "kind": kind, "path": str(path), "images": int(len(labels)),
        "classes": list(classes), "counts": [int(c) for c in counts],
        "input_shape": [3, input_hw, input_hw],
        "normalisation": {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
                          "pixel_scale": "0..1", "computed_on": "training split"},
        "split": {"seed": seed, "val_fraction": val_fraction, "stratified": True,
                  "n_train": int(len(train)), "n_val": int(len(val))},
        "fingerprint": _fingerprint(images, labels),
    }
    return UserData(name=data_name(path), classes=list(classes), x_train=norm(x_train),
                    y_train=labels[train], x_val=norm(x_val), y_val=labels[val], source=source)


@dataclass(frozen=True)
class DataOnNodes:
    """The user's data by path, for a cluster whose nodes all see that path (``--ray-data shared``): each worker
    process reads it once instead of receiving it through Ray's object store. A node that reads other data (another
    file under the same name) is refused by its fingerprint."""

    path: str
    input_hw: int
    seed: int
    fingerprint: str

    def load(self) -> UserData:
        if self not in _LOADED:
            data = load_user_data(self.path, input_hw=self.input_hw, seed=self.seed)
            if data.source["fingerprint"] != self.fingerprint:
                raise DataError(f"{self.path} on node {socket.gethostname()} holds other data (fingerprint "
                                f"{data.source['fingerprint']}) than on the driver ({self.fingerprint}): --ray-data "
                                "shared needs the same files on every node")
            _LOADED.clear()  # one task's data per worker process at a time
            _LOADED[self] = data
        return _LOADED[self]


_LOADED: dict = {}


def stratified_split(labels: np.ndarray, seed: int,
                     val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) index arrays: per class, a seeded permutation; ``round(val_fraction * n)`` of it (at least
    one, at most n - 1) goes to validation. Same labels and seed, same split, on any machine."""
    if not 0 < val_fraction < 1:
        raise DataError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(1, round(val_fraction * len(idx))), len(idx) - 1)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Content hash of the resized images and labels: a checkpoint trained on other data is not resumed."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray((images * 255).round().astype(np.uint8)).tobytes())
    h.update(labels.astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def _read_folder(path: Path, hw: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # a declared dependency; this is a broken install
        raise MissingDependencyError("reading an image folder needs Pillow: pip install pillow") from None
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"data folder {path} holds no class folders (expected {path}/<class>/*.png|jpg)")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (path / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {path / name} holds no .png/.jpg/.jpeg images")
        for file in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said below, in one line
                    im = Image.open(file)
                with im:
                    w, h = im.size
                    if w * h > MAX_IMAGE_PIXELS:
                        raise DataError(_too_large(file, f"{w}x{h} ({w * h / 1e6:.0f} megapixels)"))
                    if max(w, h) > MAX_ASPECT * min(w, h):
                        raise DataError(f"image {file} is {w}x{h}: more than {MAX_ASPECT:g}:1, it cannot be resized "
                                        f"to {hw}x{hw} without distorting it; crop it first")
                    images.append(_pixels(im, hw))
            except DataError:
                raise
            except Image.DecompressionBombError as e:  # Pillow's own refusal, at twice its limit
                pixels = re.search(r"\((\d+) pixels\)", str(e))
                raise DataError(_too_large(file, f"{int(pixels[1]) / 1e6:.0f} megapixels" if pixels else "huge")) \
                    from None
            except (UnidentifiedImageError, OSError, ValueError) as e:
                raise DataError(f"cannot read image {file}: {e}") from None
            labels.append(label)
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def _pixels(im, hw: int) -> np.ndarray:
    """One image as float32 (3, hw, hw) in 0..1, scaled by its mode's range: 16-bit grayscale (Pillow's ``I;16``
    modes, and ``I`` for a 16-bit PNG) by 65535, everything else through 8-bit RGB. Converting a 16-bit image to
    RGB directly would clip every value above 255 to white."""
    from PIL import Image

    if im.mode.startswith("I"):
        gray = Image.fromarray(np.asarray(im, dtype=np.float32) / 65535.0).resize((hw, hw), Image.BILINEAR)  # mode F
        return np.repeat(np.clip(np.asarray(gray, dtype=np.float32), 0.0, 1.0)[None], 3, axis=0)
    im = im.convert("RGB").resize((hw, hw), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _too_large(file: Path, size: str) -> str:
    return (f"image {file} is {size}, more than the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels read from one image (a "
            f"decompression bomb?); the data folder is refused: shrink the image or move it out")


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` of the .npz at ``path``, read whole here, so that a damaged file fails inside this error
    boundary and not later: a file that is not a zip archive (a single .npy renamed, anything else), a damaged
    archive, missing arrays and object arrays (pickle is never loaded) are each one line."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not zipfile.is_zipfile(path):
        what = ("a single array saved with numpy.save (.npy), not an .npz archive" if magic == b"\x93NUMPY"
                else "empty" if not magic else "a damaged or truncated .npz archive" if magic.startswith(b"PK")
                else "not an .npz archive (a zip file of .npy arrays)")
        raise DataError(f"data {path} is {what}: save the images and labels with numpy.savez(path, x=images, "
                        "y=labels)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataError(f"{path} has no array {' or '.join(missing)} (it holds "
                                f"{', '.join(f.files) or 'nothing'}); an .npz needs x (images) and y (labels)")
            x, y = f["x"], f["y"]
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):  # object arrays (ragged images) need pickle
            raise DataError(f"{path}: x and y must be plain numeric arrays (images of one size), not Python objects "
                            "(which are never unpickled)") from None
        raise DataError(f"{path} is damaged: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path} is damaged ({e}): write it again with numpy.savez") from None
    for key, value in (("x", x), ("y", y)):
        if not isinstance(value, np.ndarray):  # a member that is not in .npy format comes back as its bytes
            raise DataError(f"{path}: {key} is not a numpy array (the archive member is not in .npy format): write "
                            "it with numpy.savez")
    return x, y


def _read_npz(path: Path, hw: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x, y = _npz_arrays(path)
    if x.dtype.kind not in "uif":
        raise DataError(f"{path}: x must hold numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise DataError(f"{path}: x has shape {x.shape}; "
                        "expected (n, h, w), (n, h, w, c) or (n, c, h, w) with c 1 or 3")
    if len(x) == 0 or 0 in x.shape[2:]:
        raise DataError(f"{path}: x holds no image (shape {x.shape})")
    y = np.asarray(y)
    y = y.reshape(-1) if y.ndim == 1 or y.ndim == 2 and y.shape[1:] == (1,) else None
    if y is None or y.dtype.kind not in "ui" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"{path}: y must be one integer class label per image")
    if len(y) != len(x):
        raise DataError(f"{path}: x holds {len(x)} images but y {len(y)} labels")
    lo, hi = (float(v) for v in (x.min(), x.max()))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise DataError(f"{path}: x holds NaN or infinite values")
    top = 255 if x.dtype.kind in "ui" else 1
    if lo < 0 or hi > top:
        expected = "0..255 (uint8)" if top == 255 else "0..1 (or uint8 0..255)"
        raise DataError(f"{path}: x holds {'integers' if top == 255 else 'floats'} from {lo:g} to {hi:g}; pixels must "
                        f"be {expected}")
    h, w = x.shape[2:]
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise DataError(f"{path}: images are {w}x{h}, more than {MAX_ASPECT:g}:1; "
                        f"crop them before resizing to {hw}x{hw}")
    x = x.astype(np.float32) / (255.0 if x.dtype.kind in "ui" else 1.0)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    if (h, w) != (hw, hw):
        import torch

        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(hw, hw), mode="bilinear",
                                            align_corners=False, antialias=h > hw or w > hw).numpy()
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"{path}: y holds a negative label {y.min()}")
    present = np.unique(y)
    remap = np.searchsorted(present, y)  # labels 3, 7, 9 -> 0, 1, 2: every class present
    return x, remap, [str(int(v)) for v in present]
