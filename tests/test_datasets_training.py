"""The training side of utils/data/datasets.py: quad collation and loaders rebuilt around an existing dataset."""

import torch

from utils.data import datasets
from utils.data.datasets import YoloDataset, collate_quad, make_loader
from utils.data.shapes import generate_shapes_dataset


def quad_batch():
    items = []
    for k in range(4):
        im = torch.full((3, 4, 4), 10 * (k + 1), dtype=torch.uint8)
        items.append((im, torch.tensor([[0.0, k, 0.5, 0.5, 0.5, 0.5]]), f"{k}.jpg", None))
    return items


def test_quad_tiles_four_images_2x2(monkeypatch):
    monkeypatch.setattr(datasets.torch, "rand", lambda *a, **k: torch.tensor([0.9]))
    ims, labels, paths, _ = collate_quad(quad_batch())
    assert ims.shape == (1, 3, 8, 8) and paths == ["0.jpg"]
    assert [int(ims[0, 0, y, x]) for y, x in ((0, 0), (0, 7), (7, 0), (7, 7))] == [10, 20, 30, 40]
    expected = [[0, k, 0.25 + 0.5 * (k % 2), 0.25 + 0.5 * (k // 2), 0.25, 0.25] for k in range(4)]
    assert torch.allclose(labels, torch.tensor(expected))


def test_quad_upscales_the_first_image(monkeypatch):
    monkeypatch.setattr(datasets.torch, "rand", lambda *a, **k: torch.tensor([0.1]))
    ims, labels, _, _ = collate_quad(quad_batch())
    assert ims.shape == (1, 3, 8, 8) and bool((ims == 10).all())
    assert labels.tolist() == [[0, 0, 0.5, 0.5, 0.5, 0.5]]


def test_make_loader_sees_dataset_changes_and_drops_partial_quads(tmp_path):
    root = generate_shapes_dataset(tmp_path / "s", n_train=6, n_val=1, imgsz=64)
    ds = YoloDataset(str(root / "images" / "train"), 5, img_size=64, augment=True, hyp={"mosaic": 1.0}, workers=1)
    assert ds.mosaic
    ds.mosaic = False  # what --close-mosaic does before building a new loader
    loader = make_loader(ds, 4, workers=0, quad=True)
    batches = list(loader)
    assert len(batches) == 1 and batches[0][0].shape == (1, 3, 128, 128)  # 6 images: one quad, 2 dropped
    assert all(s is not None for s in batches[0][3])  # letterboxed items carry their shapes; mosaics do not


def test_loader_workers_run_opencv_on_their_own_thread():
    """Each worker's OpenCV pool (one thread per core) competed with the training step for the cores."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import cv2; from utils.data.datasets import seed_worker; before = cv2.getNumThreads(); seed_worker(0); "
        "print(before, cv2.getNumThreads())"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    before, after = map(int, out.stdout.split())
    assert after == 1 and (before > 1 or os.cpu_count() == 1)  # a pool of threads, then OpenCV's own loop only


def test_training_batches_come_channels_last_with_the_same_pixels(tmp_path):
    """Training items are CHW RGB laid out HWC, and batch into a channels_last tensor without a transposition: the
    step's 16x3x192x192 NCHW -> channels_last copy (1.4 ms each, several a step) is gone. The pixels are those of
    the CHW-contiguous items validation still gets."""
    root = generate_shapes_dataset(tmp_path / "s", n_train=4, n_val=1, imgsz=64)
    hyp = {"mosaic": 0.0, "fliplr": 0.0}  # no random change: both datasets letterbox the same images
    train = YoloDataset(str(root / "images" / "train"), 5, img_size=64, augment=True, hyp=hyp, workers=1)
    val = YoloDataset(str(root / "images" / "train"), 5, img_size=64, workers=1)
    ims, _, _, _ = YoloDataset.collate_fn([train[i] for i in range(4)])
    ref, _, _, _ = YoloDataset.collate_fn([val[i] for i in range(4)])
    assert ims.shape == ref.shape == (4, 3, 64, 64)
    assert ims.is_contiguous(memory_format=torch.channels_last) and not ims.is_contiguous()
    assert ref.is_contiguous()
    assert torch.equal(ims, ref)
    x = ims.float().div_(255)  # the training loop's conversion keeps the layout
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert x.data_ptr() == x.contiguous(memory_format=torch.channels_last).data_ptr()


def test_the_training_loops_input_conversion_keeps_or_drops_channels_last_as_asked():
    """The loop converts a batch with ``image_input`` (the one uint8 -> 0-1 float path): a channels_last batch stays
    channels_last (the CPU trains in it) and becomes NCHW-contiguous only where the device trains in NCHW (CUDA)."""
    from utils.devices import image_input

    nhwc = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    batch = nhwc.permute(0, 3, 1, 2)  # what collate_fn gives for training items
    x = image_input(batch, torch.device("cpu"))
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, batch.float() / 255)
    nchw = x.contiguous(memory_format=torch.contiguous_format)
    assert nchw.is_contiguous() and torch.equal(nchw, x)


def test_quad_gives_the_same_batch_from_channels_last_training_items(monkeypatch):
    """Training items arrive CHW laid out HWC (channels_last strides); quad collation tiles and upscales them to the
    same pixels as from CHW-contiguous items, for both of its branches."""
    gen = torch.Generator().manual_seed(0)
    hwc = [torch.randint(0, 256, (4, 6, 3), dtype=torch.uint8, generator=gen) for _ in range(8)]
    lb = torch.tensor([[0.0, 1, 0.5, 0.5, 0.2, 0.2]])
    nhwc = [(im.permute(2, 0, 1), lb.clone(), f"{k}.jpg", None) for k, im in enumerate(hwc)]
    nchw = [(im.permute(2, 0, 1).contiguous(), lb.clone(), f"{k}.jpg", None) for k, im in enumerate(hwc)]
    assert nhwc[0][0].stride(0) == 1 and nchw[0][0].is_contiguous()
    for r in (0.9, 0.1):  # 2x2 tile, then 2x upscale
        monkeypatch.setattr(datasets.torch, "rand", lambda *a, r=r, **k: torch.tensor([r]))
        a, la, _, _ = collate_quad(nhwc)
        b, lb_, _, _ = collate_quad(nchw)
        assert a.shape == (2, 3, 8, 12) and torch.equal(a, b) and torch.equal(la, lb_)
