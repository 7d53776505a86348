"""AutoAnchor: check that the head's anchors fit a dataset's label sizes and evolve better ones when they do not.

All sizes here are in pixels of the network input (image long side resized to ``imgsz``), not stride units.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.vq import kmeans
from tqdm import tqdm

from utils.log import LOGGER

PREFIX = "AutoAnchor: "


def label_wh_at_imgsz(
    shapes: np.ndarray,
    labels: list[np.ndarray],
    imgsz: int,
    rng: np.random.Generator | None = None,
    augment_scale: tuple[float, float] | None = (0.9, 1.1),
) -> np.ndarray:
    """Label sizes as the network sees them: ndarray[M, 2] (w, h) in pixels with the image long side = ``imgsz``.

    Args:
        shapes: ndarray[N_img, 2] original (width, height) of each image.
        labels: per image ndarray[n, 5] rows (cls, x, y, w, h), xywh normalised to the image.
        imgsz: network input size (long side) in pixels.
        rng: random generator for the scale jitter; ``None`` uses a fixed seed (0) so the check is repeatable.
        augment_scale: (low, high) per-image uniform scale jitter that mimics scale augmentation, as YOLOv5's
            anchor check does; ``None`` for none.

    No size filter is applied here: the BPR check counts every label, and ``kmean_anchors`` drops labels under
    2 px itself (as YOLOv5 does) before clustering.
    """
    shapes = np.asarray(shapes, dtype=np.float64).reshape(-1, 2)
    if len(shapes) != len(labels):
        raise ValueError(f"{len(shapes)} image shapes but {len(labels)} label arrays")
    sizes = imgsz * shapes / shapes.max(1, keepdims=True)  # (w, h) after resizing the long side to imgsz
    if augment_scale is not None:
        rng = np.random.default_rng(0) if rng is None else rng
        sizes = sizes * rng.uniform(augment_scale[0], augment_scale[1], size=(len(sizes), 1))
    parts = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(sizes, labels)]
    return np.concatenate(parts, 0) if parts else np.zeros((0, 2))


def _kmeans(obs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """scipy k-means centroids (30 restarts), seeded through ``rng`` (the keyword was ``seed`` before scipy 1.15)."""
    try:
        return kmeans(obs, n, iter=30, rng=rng)[0]
    except TypeError:
        return kmeans(obs, n, iter=30, seed=rng)[0]


def _ratio_metric(anchors: torch.Tensor, wh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Worst-side ratio of every label to every anchor (Tensor[M, K], 1 = same size) and its best over anchors."""
    r = wh[:, None] / anchors[None]
    x = torch.min(r, 1 / r).min(2)[0]
    return x, x.max(1)[0]


def anchor_metrics(anchors_px: torch.Tensor, wh: torch.Tensor, thr: float = 4.0) -> tuple[float, float]:
    """Best possible recall and anchors above threshold.

    Args:
        anchors_px: Tensor[K, 2] anchor (w, h) in pixels.
        wh: Tensor[M, 2] label (w, h) in pixels.
        thr: a label fits an anchor when neither side differs by more than ``thr`` times (the loss's anchor_t).

    Returns:
        ``bpr``: fraction of labels that fit at least one anchor; ``aat``: mean number of anchors each label fits.
    """
    x, best = _ratio_metric(torch.as_tensor(anchors_px).float(), torch.as_tensor(wh).float())
    aat = (x > 1 / thr).float().sum(1).mean()
    bpr = (best > 1 / thr).float().mean()
    return float(bpr), float(aat)


def _describe(k: np.ndarray, wh: torch.Tensor, thr: float, img_size: int) -> str:
    x, best = _ratio_metric(torch.tensor(k, dtype=torch.float32), wh)
    bpr, aat = (best > 1 / thr).float().mean(), (x > 1 / thr).float().mean() * len(k)
    past = x[x > 1 / thr]
    past_mean = past.mean() if past.numel() else torch.tensor(0.0)
    sizes = ", ".join(f"{round(float(w))},{round(float(h))}" for w, h in k)
    return (
        f"{PREFIX}thr={1 / thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr\n"
        f"{PREFIX}n={len(k)}, img_size={img_size}, metric_all={x.mean():.3f}/{best.mean():.3f}-mean/best, "
        f"past_thr={past_mean:.3f}-mean: {sizes}"
    )


def kmean_anchors(
    wh: np.ndarray,
    n: int = 9,
    img_size: int = 640,
    thr: float = 4.0,
    gen: int = 1000,
    seed: int = 0,
    verbose: bool = True,
) -> np.ndarray:
    """Anchors evolved for label sizes ``wh``: k-means on whitened sizes, then a genetic refinement.

    Args:
        wh: ndarray[M, 2] label (w, h) in pixels at ``img_size`` (see ``label_wh_at_imgsz``).
        n: number of anchors (nl * na).
        img_size: network input size, used for the random fallback and the report.
        thr: anchor_t of the loss; the fitness counts a label's best ratio only when it is above ``1/thr``.
        gen: generations of mutation (each mutates all anchors, kept only if fitness improves).
        seed: seeds k-means and the mutations, so the result is repeatable.
        verbose: print the anchors after every improvement (the final summary is always printed).

    Returns:
        ndarray[n, 2] float32 anchor (w, h) in pixels, sorted by area (small first).
    """
    rng = np.random.default_rng(seed)
    wh0 = np.asarray(wh, dtype=np.float64).reshape(-1, 2)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        LOGGER.warning(
            f"{PREFIX}WARNING ⚠️ Extremely small objects found: {tiny} of {len(wh0)} labels are <3 pixels in size"
        )
    # Labels with both sides under 2 px carry no usable shape and would drag the clusters to zero.
    wh_np = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)

    k = None
    if n <= len(wh_np):
        LOGGER.info(f"{PREFIX}Running kmeans for {n} anchors on {len(wh_np)} points...")
        std = wh_np.std(0)
        std[std == 0] = 1.0  # identical sizes along one axis: nothing to whiten
        centroids = _kmeans(wh_np / std, n, rng) * std
        if len(centroids) == n:  # scipy drops clusters that end up empty
            k = centroids
    if k is None:
        LOGGER.warning(f"{PREFIX}WARNING ⚠️ switching strategies from kmeans to random init")
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size

    wh_t = torch.tensor(wh_np, dtype=torch.float32)
    wh0_t = torch.tensor(wh0, dtype=torch.float32)

    def fitness(anchors: np.ndarray) -> float:
        _, best = _ratio_metric(torch.tensor(anchors, dtype=torch.float32), wh_t)
        return float((best * (best > 1 / thr).float()).mean())

    k = k[np.argsort(k.prod(1))]
    f = fitness(k)
    mutate_p, sigma = 0.9, 0.1
    pbar = tqdm(range(gen), bar_format="{l_bar}{bar:10}{r_bar}")
    for _ in pbar:
        v = np.ones(k.shape)
        while (v == 1).all():  # make sure something changes
            mask = rng.random(k.shape) < mutate_p
            v = (mask * rng.random() * rng.standard_normal(k.shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg
            pbar.desc = f"{PREFIX}Evolving anchors with Genetic Algorithm: fitness = {f:.4f}"
            if verbose:
                LOGGER.info(_describe(k[np.argsort(k.prod(1))], wh0_t, thr, img_size))
    k = k[np.argsort(k.prod(1))]
    LOGGER.info(_describe(k, wh0_t, thr, img_size))
    return k.astype(np.float32)


def check_anchor_order(anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Anchors Tensor[nl, na, 2] in pixels, flipped along levels when their mean area decreases while strides grow.

    Returns a new tensor (the input is not modified); large anchors must sit on the coarse (large stride) levels.
    """
    area = anchors.prod(-1).mean(-1).view(-1)
    da = area[-1] - area[0]
    ds = torch.as_tensor(strides).view(-1)[-1] - torch.as_tensor(strides).view(-1)[0]
    if da != 0 and torch.sign(da) != torch.sign(ds.to(da)):
        LOGGER.info(f"{PREFIX}Reversing anchor order")
        return anchors.flip(0)
    return anchors.clone()


def check_anchors(
    anchors_px: torch.Tensor,
    strides: torch.Tensor,
    wh: np.ndarray,
    thr: float = 4.0,
    imgsz: int = 640,
    gen: int = 1000,
    seed: int = 0,
) -> torch.Tensor | None:
    """Check the anchors against the dataset and propose evolved ones if they fit poorly.

    Args:
        anchors_px: Tensor[nl, na, 2] current anchor (w, h) in pixels.
        strides: Tensor[nl] level strides in pixels.
        wh: ndarray[M, 2] label (w, h) in pixels at ``imgsz`` (see ``label_wh_at_imgsz``).
        thr: the loss's anchor_t.
        imgsz: network input size.
        gen, seed: passed to ``kmean_anchors``.

    Returns:
        ``None`` when the current anchors are kept (BPR > 0.98, or evolution did not beat them); otherwise new
        Tensor[nl, na, 2] anchors in pixels (same dtype/device as ``anchors_px``), small to large by area, the
        smallest ``na`` on the first level. Divide by the strides before loading them into the head.
    """
    anchors_px = torch.as_tensor(anchors_px)
    wh_t = torch.as_tensor(np.asarray(wh), dtype=torch.float32).reshape(-1, 2)
    bpr, aat = anchor_metrics(anchors_px.detach().cpu().view(-1, 2), wh_t, thr)
    s = f"\n{PREFIX}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). "
    if bpr > 0.98:
        LOGGER.info(f"{s}Current anchors are a good fit to dataset ✅")
        return None
    LOGGER.info(f"{s}Anchors are a poor fit to dataset ⚠️, attempting to improve...")
    n = anchors_px.numel() // 2
    new = kmean_anchors(wh_t.numpy(), n=n, img_size=imgsz, thr=thr, gen=gen, seed=seed, verbose=False)
    new_bpr, _ = anchor_metrics(torch.from_numpy(new), wh_t, thr)
    if new_bpr <= bpr:
        LOGGER.info(f"{PREFIX}Done ⚠️ (original anchors better than new anchors, proceeding with original anchors)")
        return None
    out = torch.from_numpy(new).to(dtype=anchors_px.dtype, device=anchors_px.device).view_as(anchors_px)
    out = check_anchor_order(out, strides)
    LOGGER.info(f"{PREFIX}Done ✅ (optional: update model *.yaml to use these anchors in the future)")
    return out
