"""Datasets for ``irnet.train`` and the input pipeline that keeps them off the critical path.

* ``cifar10`` / ``cifar100``: torchvision's on-disk format (the python-pickle batches in
  ``cifar-10-batches-py/`` or ``cifar-100-python/``), read here with pickle + numpy;
  :func:`download_cifar` fetches the official archive when asked.
* ``npz``: a file with ``x`` (uint8, N x H x W or N x H x W x 3) and ``y`` (labels).
* ``builtin``: the MNIST subset shipped in ``irnet/data/mnist_builtin.npz`` (see its README).
* ``imagenet``: an ImageFolder tree (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``),
  decoded by PIL in DataLoader workers (PIL is imported only when this is used).

Small datasets are held whole as one uint8 tensor ``(N, C, H, W)`` on the training device
and augmented there a batch at a time (random crop with zero padding + horizontal flip as
one gather), so no per-image Python runs in the training loop.

Every random choice of an epoch is a pure function of ``(seed, epoch)`` (the shuffle) and
``(seed, epoch, step)`` (the augmentation of that step's global batch), never of a
generator's running state: a run resumed in the middle of an epoch replays the rest of
it exactly, and a distributed run sees exactly the batches a single process would (each
rank takes its contiguous slice of every global batch).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ArrayDataset", "load_arrays", "download_cifar", "builtin_path", "EpochPlan", "derive_seed",
           "crop_flip", "Normalizer", "ImageFolderDataset", "DATASETS"]

DATASETS = ("cifar10", "cifar100", "npz", "builtin", "imagenet")

# The paper's CIFAR code normalizes with the ImageNet statistics (transforms.Normalize in
# IR-Net's CIFAR-10 trainer.py / main.py); irnet keeps that for CIFAR and ImageNet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    label=b"labels", classes=10, url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], label=b"fine_labels", classes=100,
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85"),
}


@dataclass
class ArrayDataset:
    """A whole dataset as tensors: ``x`` uint8 (N, C, H, W), ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple
    name: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x.shape[-1])

    def to(self, device) -> "ArrayDataset":
        return ArrayDataset(self.x.to(device), self.y.to(device), self.num_classes, self.mean, self.std, self.name)


# --------------------------------------------------------------------------- loading
def _as_nchw(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 images, got dtype {x.dtype}")
    if x.ndim == 3:                      # N x H x W (grey)
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3):   # N x H x W x C
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise ValueError(f"{what}: expected images N x H x W or N x H x W x 3, got shape {x.shape}")


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: expected {n} integer labels, got dtype {y.dtype} shape {y.shape}")
    if n and y.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0, got min {y.min()}")
    return y.astype(np.int64)


def _channel_stats(x: np.ndarray):
    """Per-channel mean and std of uint8 images in [0, 1] (float64 accumulation)."""
    v = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(x.shape[1], -1) / 255.0
    return tuple(float(m) for m in v.mean(1)), tuple(float(max(s, 1e-3)) for s in v.std(1))


def _make(x, y, num_classes, mean, std, name) -> ArrayDataset:
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), int(num_classes),
                        tuple(mean), tuple(std), name)


def _cifar_dir(data_dir: str, name: str) -> str | None:
    info = _CIFAR[name]
    for cand in (os.path.join(data_dir, info["folder"]), data_dir):
        if all(os.path.isfile(os.path.join(cand, f)) for f in info["train"] + info["test"]):
            return cand
    return None


def _read_cifar_batches(folder: str, files, label_key):
    xs, ys = [], []
    for f in files:
        path = os.path.join(folder, f)
        try:
            with open(path, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            data = np.asarray(d[b"data"], dtype=np.uint8)
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        except Exception as exc:  # truncated / not a CIFAR batch
            raise ValueError(f"cannot read the CIFAR batch {path}: {type(exc).__name__}: {exc}") from exc
    return np.concatenate(xs), np.concatenate(ys)


def download_cifar(name: str, data_dir: str) -> str:
    """Fetch and unpack the official CIFAR archive into ``data_dir`` (md5-checked)."""
    info = _CIFAR[name]
    os.makedirs(data_dir, exist_ok=True)
    print(f"downloading {info['url']} into {data_dir} ...", flush=True)
    fd, tmp = tempfile.mkstemp(dir=data_dir, suffix=".tar.gz.part")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(info["url"], timeout=60) as resp:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
            except (urllib.error.URLError, OSError) as exc:
                raise ConnectionError(f"could not download {info['url']} ({exc}). Are you offline? Download it by hand "
                                   f"and unpack it into {data_dir}") from exc
        digest = hashlib.md5(open(tmp, "rb").read()).hexdigest()
        if digest != info["md5"]:
            raise OSError(f"downloaded {info['url']} has md5 {digest}, expected {info['md5']}")
        with tarfile.open(tmp, "r:gz") as tar:
            try:
                tar.extractall(data_dir, filter="data")
            except TypeError:  # Python without extraction filters
                tar.extractall(data_dir)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.path.join(data_dir, info["folder"])


def load_cifar(name: str, data_dir: str, download: bool = False):
    info = _CIFAR[name]
    if not data_dir:
        raise ValueError(f"--dataset {name} needs --data-dir (the folder holding {info['folder']}/)")
    folder = _cifar_dir(data_dir, name)
    if folder is None and download:
        download_cifar(name, data_dir)
        folder = _cifar_dir(data_dir, name)
    if folder is None:
        raise FileNotFoundError(
            f"{name} not found under {data_dir!r}: expected {info['folder']}/ with {', '.join(info['train'] + info['test'])} "
            f"(torchvision's on-disk format). Pass --download to fetch it from {info['url']}.")
    xtr, ytr = _read_cifar_batches(folder, info["train"], info["label"])
    xte, yte = _read_cifar_batches(folder, info["test"], info["label"])
    return (_make(xtr, ytr, info["classes"], IMAGENET_MEAN, IMAGENET_STD, name),
            _make(xte, yte, info["classes"], IMAGENET_MEAN, IMAGENET_STD, name))


def _read_npz(path: str, keys=("x", "y")):
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"npz file not found: {path!r}")
    try:
        with np.load(path) as d:
            missing = [k for k in keys if k not in d.files]
            if missing:
                raise ValueError(f"{path}: expected arrays {list(keys)}, missing {missing} (has {d.files})")
            return [d[k] for k in keys]
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read {path} as an .npz file: {type(exc).__name__}: {exc}") from exc


def builtin_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mnist_builtin.npz")


def _pair_from_arrays(xtr, ytr, xte, yte, name):
    xtr, xte = _as_nchw(xtr, f"{name} train"), _as_nchw(xte, f"{name} test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"{name}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in shape")
    ytr, yte = _labels(ytr, len(xtr), f"{name} train"), _labels(yte, len(xte), f"{name} test")
    classes = int(max(ytr.max(initial=0), yte.max(initial=0))) + 1
    mean, std = _channel_stats(xtr)
    return _make(xtr, ytr, classes, mean, std, name), _make(xte, yte, classes, mean, std, name)


def load_arrays(dataset: str, data_dir: str | None = None, train_file: str | None = None,
                test_file: str | None = None, download: bool = False):
    """(train, test) :class:`ArrayDataset` for the in-memory datasets."""
    if dataset in _CIFAR:
        return load_cifar(dataset, data_dir, download)
    if dataset == "builtin":
        xtr, ytr, xte, yte = _read_npz(builtin_path(), ("x_train", "y_train", "x_test", "y_test"))
        return _pair_from_arrays(xtr, ytr, xte, yte, "builtin")
    if dataset == "npz":
        if data_dir and not (train_file and test_file):
            train_file = train_file or os.path.join(data_dir, "train.npz")
            test_file = test_file or os.path.join(data_dir, "test.npz")
        if not (train_file and test_file):
            raise ValueError("--dataset npz needs --train-file and --test-file (or --data-dir with train.npz, test.npz)")
        xtr, ytr = _read_npz(train_file)
        xte, yte = _read_npz(test_file)
        return _pair_from_arrays(xtr, ytr, xte, yte, "npz")
    raise ValueError(f"unknown in-memory dataset {dataset!r}; expected one of cifar10, cifar100, npz, builtin")


# --------------------------------------------------------------------------- epoch plan
def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


class EpochPlan:
    """Which samples step ``s`` of epoch ``e`` uses, on every rank.

    The permutation of epoch ``e`` is ``randperm(n)`` seeded by ``(seed, e)``; step ``s``
    takes ``perm[s*B:(s+1)*B]`` (``B`` the global batch, the last partial batch dropped as
    in the paper's code), and rank ``r`` of ``W`` the contiguous slice
    ``[r*B/W, (r+1)*B/W)`` of it: the ranks together see exactly a single process's batch.
    """

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1):
        if global_batch % world:
            raise ValueError(f"the global batch size {global_batch} is not divisible by the {world} processes")
        if n < global_batch:
            raise ValueError(f"the training set has {n} samples, fewer than one global batch of {global_batch}")
        self.n, self.batch, self.seed, self.epoch, self.rank, self.world = n, global_batch, seed, epoch, rank, world
        self.local = global_batch // world
        self.steps = n // global_batch
        self.perm_seed = derive_seed(seed, epoch)
        self.perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.perm_seed))

    def local_slice(self) -> slice:
        return slice(self.rank * self.local, (self.rank + 1) * self.local)

    def indices(self, step: int) -> torch.Tensor:
        g = self.perm[step * self.batch:(step + 1) * self.batch]
        return g[self.local_slice()]

    def generator(self, step: int) -> torch.Generator:
        """CPU generator of the augmentation of (epoch, step): the same on every rank."""
        return torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, step, 1))


# --------------------------------------------------------------------------- augmentation on device
def crop_flip(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator, rows: slice | None = None,
              total: int | None = None) -> torch.Tensor:
    """Random crop (zero padding ``pad``, same size out) and horizontal flip of a uint8 batch.

    Offsets/flips are drawn on the CPU from ``gen`` for the whole global batch of ``total``
    images, of which ``x`` is the ``rows`` slice (so every rank draws the same numbers and
    takes its own), then one gather on ``x``'s device does the batch: output pixel (i, j) of
    image n is padded pixel (oy_n + i, ox_n + j'), j' = W-1-j when flipped."""
    n_global = x.shape[0] if total is None else total
    oy = torch.randint(0, 2 * pad + 1, (n_global,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n_global,), generator=gen)
    fl = torch.rand(n_global, generator=gen) < 0.5
    if rows is not None:
        oy, ox, fl = oy[rows], ox[rows], fl[rows]
    if pad == 0 and not flip:
        return x
    n, _, h, w = x.shape
    dev = x.device
    oy, ox, fl = oy.to(dev, non_blocking=True), ox.to(dev, non_blocking=True), fl.to(dev, non_blocking=True)
    xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
    if not pad:
        oy, ox = torch.zeros_like(oy), torch.zeros_like(ox)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    r = oy[:, None] + ar_h                                # (n, h)
    c = ox[:, None] + ar_w                                # (n, w)
    if flip:
        c = torch.where(fl[:, None], c.flip(1), c)
    out = xp[torch.arange(n, device=dev)[:, None, None], :, r[:, :, None], c[:, None, :]]   # (n, h, w, C)
    return out.permute(0, 3, 1, 2)


class Normalizer:
    """uint8 (N, C, H, W) -> float ``(x/255 - mean) / std`` as one multiply-add per element."""

    def __init__(self, mean, std, device, dtype=torch.float32, channels_last=False):
        std_t = torch.tensor(std, dtype=torch.float64)
        mean_t = torch.tensor(mean, dtype=torch.float64)
        self.scale = (1.0 / (255.0 * std_t)).to(device=device, dtype=dtype).view(1, -1, 1, 1)
        self.shift = (mean_t / std_t).to(device=device, dtype=dtype).view(1, -1, 1, 1)
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).mul_(self.scale).sub_(self.shift)
        return x.contiguous(memory_format=self.memory_format)


# --------------------------------------------------------------------------- ImageNet (ImageFolder tree)
_IMG_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _pil():
    try:
        from PIL import Image, ImageEnhance
    except ImportError as exc:
        raise ImportError("--dataset imagenet needs Pillow to decode the images: pip install pillow") from exc
    return Image, ImageEnhance


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<class>/<image>`` (classes sorted by name) decoded by PIL.

    Training items are ``(index, seed)`` pairs: the random-resized crop (scale 0.08-1,
    ratio 3/4-4/3), flip and colour jitter of that sample come from ``seed`` alone.
    Test items are plain indices: resize the short side to ``resize``, centre crop ``size``.
    Images come out as uint8 (3, size, size); normalization runs on the device."""

    def __init__(self, root: str, train: bool, size: int = 224, resize: int = 256, jitter=(0.0, 0.0, 0.0, 0.0)):
        _pil()
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder root not found: {root!r} (expected {root}/<class>/<images>)")
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not self.classes:
            raise FileNotFoundError(f"no class folders in {root!r} (expected {root}/<class>/<images>)")
        self.samples = []
        for ci, cls in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(os.path.join(root, cls))):
                self.samples += [(os.path.join(dirpath, f), ci) for f in sorted(files) if f.lower().endswith(_IMG_EXT)]
        if not self.samples:
            raise FileNotFoundError(f"no images under {root!r}")
        self.train, self.size, self.resize, self.jitter = train, int(size), int(resize), tuple(jitter)
        self.num_classes = len(self.classes)

    def __len__(self):
        return len(self.samples)

    def _random_resized_crop(self, img, rng):
        w, h = img.size
        area = w * h
        for _ in range(10):
            target = area * rng.uniform(0.08, 1.0)
            ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            cw, ch = int(round((target * ratio) ** 0.5)), int(round((target / ratio) ** 0.5))
            if 0 < cw <= w and 0 < ch <= h:
                x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return img.resize((self.size, self.size), box=(x0, y0, x0 + cw, y0 + ch), resample=2)
        s = min(w, h)                                   # fall back to a centre crop
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return img.resize((self.size, self.size), box=box, resample=2)

    def _color_jitter(self, img, rng):
        Image, ImageEnhance = _pil()
        b, c, s, hue = self.jitter
        ops = []
        for amount, enhancer in ((b, ImageEnhance.Brightness), (c, ImageEnhance.Contrast), (s, ImageEnhance.Color)):
            if amount > 0:
                ops.append((enhancer, rng.uniform(max(0.0, 1 - amount), 1 + amount)))
        for i in rng.permutation(len(ops)):
            enhancer, factor = ops[i]
            img = enhancer(img).enhance(factor)
        if hue > 0:   # rotate the hue channel by a fraction of the circle in [-hue, hue]
            shift = int(round(rng.uniform(-hue, hue) * 255))
            hsv = np.array(img.convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
            img = Image.fromarray(hsv, "HSV").convert("RGB")
        return img

    def __getitem__(self, item):
        Image, _ = _pil()
        index, seed = item if self.train else (item, None)
        path, label = self.samples[index]
        with Image.open(path) as f:
            img = f.convert("RGB")
        if self.train:
            rng = np.random.default_rng(seed)
            img = self._random_resized_crop(img, rng)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            if any(self.jitter):
                img = self._color_jitter(img, rng)
        else:
            w, h = img.size
            r = self.resize / min(w, h)
            img = img.resize((max(self.size, round(w * r)), max(self.size, round(h * r))), resample=2)
            w, h = img.size
            x0, y0 = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((x0, y0, x0 + self.size, y0 + self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x, label
