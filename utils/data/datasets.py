"""The detection dataset (validation letterbox + rectangular batches, training augmentations) and its loader."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, distributed

from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.augment import letterbox, resize_long_side
from utils.data.dataset_config import list_image_files
from utils.data.labels import WARN, folder_writable, scan_labels
from utils.data.samplers import DistributedRectSampler
from utils.log import LOGGER
from utils.train.dist import local_world_size


def rect_batch_shapes(shapes_wh: np.ndarray, batch_size: int, img_size: int, stride: int, pad: float) -> np.ndarray:
    """Network input (height, width) per batch for rectangular batching.

    Args:
        shapes_wh: ndarray[N, 2] (width, height) of the images, already sorted by aspect ratio (h / w).

    Returns:
        ndarray[n_batches, 2] (height, width): the batch's extreme aspect ratio times ``img_size``, divided by
        ``stride``, plus ``pad``, rounded up, times ``stride``.
    """
    ar = shapes_wh[:, 1] / shapes_wh[:, 0]
    bi = np.floor(np.arange(len(ar)) / batch_size).astype(int)
    out = []
    for b in range(bi[-1] + 1):
        ari = ar[bi == b]
        mini, maxi = ari.min(), ari.max()
        shape = [maxi, 1] if maxi < 1 else [1, 1 / mini] if mini > 1 else [1, 1]
        out.append(shape)
    return (np.ceil(np.array(out) * img_size / stride + pad).astype(int) * stride).astype(int)


class YoloDataset(Dataset):
    """Images with YOLO labels.

    Each item is ``(image Tensor[3, H, W] uint8 RGB, labels Tensor[n, 6] (0, cls, x, y, w, h) normalised to the
    returned image, path, shapes)`` where ``shapes`` is ``((h0, w0), ((h / h0, w / w0), (pad_w, pad_h)))`` for
    mapping boxes back to the original image (None for mosaics). Augmented (training) images are laid out HWC in
    memory (channels_last strides) and ``collate_fn`` stacks them into a channels_last batch.
    """

    def __init__(
        self,
        sources: list[str] | str,
        nc: int,
        img_size: int = 640,
        batch_size: int = 16,
        augment: bool = False,
        hyp: dict | None = None,
        rect: bool = False,
        stride: int = 32,
        pad: float = 0.0,
        single_cls: bool = False,
        cache: str | None = None,
        prefix: str = "",
        workers: int = 8,
    ):
        self.img_size, self.augment, self.hyp, self.stride = img_size, augment, hyp or {}, stride
        self.rect = rect
        self.mosaic = augment and not rect
        im_files = list_image_files(sources)
        scan = scan_labels(im_files, nc, prefix=prefix, workers=workers)
        self.scan = scan
        self.im_files, self.labels, self.shapes = scan.im_files, scan.labels, scan.shapes
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        n = len(self.im_files)
        self.indices = np.arange(n)
        self.batch_shapes = None
        if self.rect:
            order = (self.shapes[:, 1] / self.shapes[:, 0]).argsort()
            self.im_files = [self.im_files[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.shapes = self.shapes[order]
            self.batch_shapes = rect_batch_shapes(self.shapes, batch_size, img_size, stride, pad)
            self.batch_index = np.floor(np.arange(n) / batch_size).astype(int)
        self.ims: list[np.ndarray | None] = [None] * n
        self.npy_files = [Path(f).with_suffix(".npy") for f in self.im_files]
        if cache:
            self._cache_images(cache, prefix)

    def __len__(self) -> int:
        return len(self.im_files)

    def _cache_images(self, cache: str, prefix: str) -> None:
        if cache == "disk":
            if not folder_writable(Path(self.im_files[0]).parent):
                LOGGER.warning(f"{prefix}{WARN} image folder is not writeable, --cache disk skipped (use --cache ram)")
                return
            for i, f in enumerate(self.npy_files):
                if not f.exists():
                    np.save(f, self.load_image(i)[0])
            return
        gb = 0
        for i in range(len(self)):
            self.ims[i] = self.load_image(i)[0]
            gb += self.ims[i].nbytes
        LOGGER.info(f"{prefix}Caching images ({gb / 1e9:.1f}GB ram)")

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image ``i`` as BGR with its long side resized to ``img_size``; returns (im, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            im = self.ims[i]
            h0, w0 = int(self.shapes[i][1]), int(self.shapes[i][0])
            return im, (h0, w0), im.shape[:2]
        f = self.im_files[i]
        npy = self.npy_files[i]
        if npy.exists():
            im = np.load(npy)
            return im, (int(self.shapes[i][1]), int(self.shapes[i][0])), im.shape[:2]
        im = cv2.imread(f)
        if im is None:
            raise OSError(f"{f}: image could not be read")
        h0, w0 = im.shape[:2]
        im = resize_long_side(im, self.img_size, augment=self.augment)
        return im, (h0, w0), im.shape[:2]

    def __getitem__(self, index: int):
        hyp = self.hyp
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item())) if self.augment else None
        if self.mosaic and rng.random() < hyp.get("mosaic", 0.0):
            from utils.data.augment import load_mosaic, mixup

            picks = [index, *rng.integers(0, len(self), 3).tolist()]
            im, labels = load_mosaic(picks, self.load_image, lambda i: self.labels[i], self.img_size, hyp, rng)
            shapes = None
            if rng.random() < hyp.get("mixup", 0.0):
                picks2 = [int(rng.integers(0, len(self))), *rng.integers(0, len(self), 3).tolist()]
                im2, labels2 = load_mosaic(picks2, self.load_image, lambda i: self.labels[i], self.img_size, hyp, rng)
                im, labels = mixup(im, labels, im2, labels2, rng)
        else:
            im, (h0, w0), (h, w) = self.load_image(index)
            shape = self.batch_shapes[self.batch_index[index]] if self.rect else self.img_size
            im, ratio, pad = letterbox(im, shape, auto=False, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0, w / w0), pad)
            labels = self.labels[index].copy()
            if labels.size:
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
            if self.augment:
                from utils.data.augment import random_perspective

                im, labels = random_perspective(
                    im,
                    labels,
                    hyp.get("degrees", 0),
                    hyp.get("translate", 0),
                    hyp.get("scale", 0),
                    hyp.get("shear", 0),
                    hyp.get("perspective", 0),
                    rng=rng,
                )
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=im.shape[1], h=im.shape[0], clip=True, eps=1e-3)
        if self.augment:
            from utils.data.augment import augment_hsv, random_flip

            augment_hsv(im, hyp.get("hsv_h", 0), hyp.get("hsv_s", 0), hyp.get("hsv_v", 0), rng)
            im, labels = random_flip(im, labels, hyp.get("fliplr", 0), hyp.get("flipud", 0), rng)
        out = torch.zeros((nl, 6))
        if nl:
            out[:, 1:] = torch.from_numpy(np.ascontiguousarray(labels[:, :5]))
        if self.augment:  # training: CHW RGB laid out HWC (channels_last, the layout the CPU trains in): no transpose
            chw = torch.from_numpy(cv2.cvtColor(im, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)
        else:
            chw = torch.from_numpy(np.ascontiguousarray(im.transpose((2, 0, 1))[::-1]))  # HWC BGR -> CHW RGB
        return chw, out, self.im_files[index], shapes

    @staticmethod
    def collate_fn(batch):
        ims, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i
        if ims[0].stride(0) == 1:  # channels_last images (training) stack into a channels_last batch, no transpose
            batch = torch.stack([im.permute(1, 2, 0) for im in ims]).permute(0, 3, 1, 2)
        else:
            batch = torch.stack(ims, 0)
        return batch, torch.cat(labels, 0), list(paths), list(shapes)


def seed_worker(worker_id: int) -> None:
    """Per DataLoader worker: distinct, reproducible NumPy/random seeds, and OpenCV on the worker's own thread.

    PyTorch gives each worker one intra-op thread; OpenCV would still start a pool of one thread per core for every
    warp and colour conversion, so each worker's augmentation competed with the training step for all the cores
    (as YOLOv5 does, OpenCV threading is off in the workers; the shapes job, 2 epochs alternated 3 times: training
    19.9-26.1 s, mean 22.6, with it vs 23.2-24.1 s, mean 23.7, without: within this machine's noise).
    """
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(0)


def create_dataloader(
    sources: list[str] | str,
    nc: int,
    img_size: int,
    batch_size: int,
    stride: int,
    hyp: dict | None = None,
    augment: bool = False,
    cache: str | None = None,
    pad: float = 0.0,
    rect: bool = False,
    rank: int = -1,
    workers: int = 8,
    prefix: str = "",
    shuffle: bool = False,
    single_cls: bool = False,
    seed: int = 0,
    quad: bool = False,
    persistent: bool | None = None,
):
    """A DataLoader over ``YoloDataset``; DistributedSampler when ``rank`` >= 0. Returns (loader, dataset).

    ``persistent`` keeps the worker processes between passes (default: for augmented training data only).
    """
    dataset = YoloDataset(
        sources, nc, img_size, batch_size, augment, hyp, rect, stride, pad, single_cls, cache, prefix, workers
    )
    loader = make_loader(
        dataset, batch_size, rank=rank, workers=workers, shuffle=shuffle, seed=seed, quad=quad, persistent=persistent
    )
    return loader, dataset


def make_loader(
    dataset: YoloDataset,
    batch_size: int,
    rank: int = -1,
    workers: int = 8,
    shuffle: bool = False,
    seed: int = 0,
    sampler: Sampler | None = None,
    quad: bool = False,
    persistent: bool | None = None,
) -> DataLoader:
    """A DataLoader over an existing dataset.

    Training builds a new loader when the dataset's state changes (mosaic switched off for the last epochs):
    persistent workers hold their own copy of the dataset and would not see the change. ``sampler`` overrides
    shuffling (``--image-weights``); ``rank`` >= 0 (a started process group) uses a DistributedSampler, or for
    rectangular batches a ``DistributedRectSampler``; DataLoader workers per rank are at most the machine's cores
    divided by its ranks. ``quad`` collates 4 images into one (and drops an incomplete last batch).
    """
    batch_size = min(batch_size, len(dataset))
    cpus = max(1, (os.cpu_count() or 1) // local_world_size())  # the machine's cores are shared by its ranks
    nw = min(cpus, batch_size if batch_size > 1 else 0, workers)
    if sampler is None and rank != -1:
        if dataset.rect:  # each per-rank batch must be one of the dataset's rectangular batches
            sampler = DistributedRectSampler(dataset.batch_index, batch_size)
        else:
            sampler = distributed.DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        num_workers=nw,
        sampler=sampler,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_quad if quad else YoloDataset.collate_fn,
        worker_init_fn=seed_worker,
        generator=generator,
        persistent_workers=nw > 0 and (dataset.augment if persistent is None else persistent),
        drop_last=quad,  # quad collation needs groups of 4 images
    )


def collate_quad(batch):
    """``--quad`` collation: every 4 images become one image of twice the size, a 2x2 tile or the first image
    upscaled 2x (half the time each); labels (img, cls, xywhn) follow. Returns a batch of ``len(batch) // 4``.
    """
    ims, labels, paths, shapes = YoloDataset.collate_fn(batch)
    n = len(batch) // 4
    out_ims, out_labels = [], []
    offsets = torch.tensor([[0.0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 1, 1, 0, 0]])
    for i in range(n):
        j = 4 * i
        if torch.rand(1).item() < 0.5:
            im = torch.nn.functional.interpolate(ims[j : j + 1].float(), scale_factor=2.0, mode="bilinear")
            im = im.round().clamp(0, 255).to(ims.dtype)[0]
            lb = labels[labels[:, 0] == j].clone()
        else:
            top = torch.cat((ims[j], ims[j + 1]), 2)
            bottom = torch.cat((ims[j + 2], ims[j + 3]), 2)
            im = torch.cat((top, bottom), 1)
            parts = []
            for k in range(4):  # each tile covers half of the new image in x and y
                lb = labels[labels[:, 0] == j + k].clone()
                lb[:, 2:] = (lb[:, 2:] + offsets[k, 2:]) * 0.5
                parts.append(lb)
            lb = torch.cat(parts, 0)
        lb[:, 0] = i
        out_ims.append(im)
        out_labels.append(lb)
    return torch.stack(out_ims, 0), torch.cat(out_labels, 0), list(paths[: 4 * n : 4]), list(shapes[: 4 * n : 4])


def label_stats(dataset: YoloDataset) -> np.ndarray:
    """All labels of a dataset as ndarray[n, 5] (cls, x, y, w, h normalised), for plots and AutoAnchor."""
    return np.concatenate(dataset.labels, 0) if dataset.labels else np.zeros((0, 5), np.float32)


def image_class_weights(labels: list[np.ndarray], nc: int) -> np.ndarray:
    """Per-image sampling weights from inverse class frequency (``--image-weights``)."""
    counts = np.bincount(
        np.concatenate([lb[:, 0].astype(int) for lb in labels] or [np.zeros(0, int)]), minlength=nc
    ).astype(float)
    counts[counts == 0] = 1
    cw = 1 / counts
    cw /= cw.sum()
    w = np.array([cw[lb[:, 0].astype(int)].sum() if len(lb) else cw.mean() for lb in labels])
    return w / w.sum()
