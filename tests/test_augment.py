import numpy as np

from utils.data.augment import (
    augment_hsv,
    box_candidates,
    copy_paste,
    load_mosaic,
    mixup,
    random_flip,
    random_perspective,
)

NO_GEOMETRY = {"degrees": 0.0, "translate": 0.0, "scale": 0.0, "shear": 0.0, "perspective": 0.0, "copy_paste": 0.0}
SCRATCH_LOW_GEOMETRY = {**NO_GEOMETRY, "translate": 0.1, "scale": 0.5}


class HighRng:
    """Stands in for np.random.Generator: every uniform draw returns its upper limit."""

    def uniform(self, low=0.0, high=1.0, size=None):
        return high if size is None else np.full(size, high, dtype=np.float64)


def noise_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_random_perspective_with_zero_ranges_is_identity():
    im = noise_image(90, 120)
    labels = np.array([[0, 10, 20, 50, 60], [1, 70, 5, 110, 85]], dtype=np.float64)
    out, out_labels = random_perspective(im.copy(), labels, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, im)
    np.testing.assert_array_equal(out_labels, labels)


def test_pure_translation_moves_image_and_boxes_by_the_offset():
    im = noise_image(80, 100)
    labels = np.array([[2, 10, 20, 50, 60]], dtype=np.float64)
    # translation drawn at its upper limit: +0.1 of the output size = 10 px right, 8 px down
    out, out_labels = random_perspective(im, labels, translate=0.1, rng=HighRng())
    np.testing.assert_array_equal(out_labels, [[2, 20, 28, 60, 68]])
    np.testing.assert_array_equal(out[8:, 10:], im[:-8, :-10])
    assert (out[:8] == 114).all() and (out[:, :10] == 114).all()


def test_random_translation_keeps_boxes_on_their_pixels():
    im = np.zeros((100, 100, 3), dtype=np.uint8)
    im[30:60, 40:70] = 255
    labels = np.array([[0, 40, 30, 70, 60]], dtype=np.float64)
    out, out_labels = random_perspective(im, labels, translate=0.2, rng=np.random.default_rng(5))
    ys, xs = np.nonzero(out[..., 0] > 127)
    _, x1, y1, x2, y2 = out_labels[0]
    assert (x1, y1) != (40, 30)  # it did move
    np.testing.assert_allclose([x1, y1, x2, y2], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)


def test_boxes_pushed_out_of_the_image_are_dropped():
    labels = np.array([[0, 85, 10, 98, 30], [1, 10, 10, 40, 40]], dtype=np.float64)
    # 30% of 100 px to the right: the first box leaves the image, the second stays whole
    _, out_labels = random_perspective(noise_image(100, 100), labels, translate=0.3, rng=HighRng())
    np.testing.assert_array_equal(out_labels, [[1, 40, 40, 70, 70]])


def test_box_candidates_known_answers():
    before = np.array([[0, 0, 10, 10]] * 4 + [[0, 0, 1000, 10], [0, 0, 500, 10]], dtype=np.float64)
    after = np.array(
        [
            [0, 0, 10, 10],  # unchanged: kept
            [0, 0, 2, 10],  # 2 px wide is not > 2: dropped
            [0, 0, 3, 10],  # 30% of its area left: kept
            [0, 0, 3, 3],  # 9% of its area left: dropped
            [0, 0, 1000, 5],  # aspect 200: dropped
            [0, 0, 500, 10],  # aspect 50: kept
        ],
        dtype=np.float64,
    )
    assert box_candidates(before, after).tolist() == [True, False, True, False, False, True]


def test_flips_mirror_a_known_box():
    im = noise_image(4, 6)
    labels = np.array([[2, 0.25, 0.4, 0.1, 0.2]])
    out, out_labels = random_flip(im, labels, fliplr=1.0, flipud=0.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, im[:, ::-1])
    np.testing.assert_allclose(out_labels, [[2, 0.75, 0.4, 0.1, 0.2]])
    out, out_labels = random_flip(im, labels, fliplr=0.0, flipud=1.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, im[::-1])
    np.testing.assert_allclose(out_labels, [[2, 0.25, 0.6, 0.1, 0.2]])
    out, out_labels = random_flip(im, labels, fliplr=0.0, flipud=0.0, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, im)
    assert labels[0, 1] == 0.25  # the input labels are not modified


TILE_SHAPES = [(64, 48), (40, 64), (64, 64), (50, 30)]  # (h, w), long side = imgsz = 64
TILE_BOXES = [(5, 10, 30, 40), (20, 5, 50, 30), (10, 10, 54, 54), (2, 20, 28, 45)]  # xyxy pixels of each tile


def tile_loaders():
    """Tile k: grey 60 with its box filled with value 100 + 40 * k, labelled class k."""

    def load_image(k):
        h, w = TILE_SHAPES[k]
        im = np.full((h, w, 3), 60, dtype=np.uint8)
        x1, y1, x2, y2 = TILE_BOXES[k]
        im[y1:y2, x1:x2] = 100 + 40 * k
        return im, (2 * h, 2 * w), (h, w)

    def labels_of(k):
        h, w = TILE_SHAPES[k]
        x1, y1, x2, y2 = TILE_BOXES[k]
        return np.array([[k, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]])

    return load_image, labels_of


def test_mosaic_labels_sit_on_their_pixels():
    load_image, labels_of = tile_loaders()
    rng = np.random.default_rng(0)
    n_labels = 0
    for _ in range(20):
        im, labels = load_mosaic([0, 1, 2, 3], load_image, labels_of, 64, NO_GEOMETRY, rng)
        assert im.shape == (64, 64, 3) and im.dtype == np.uint8
        for cls, x1, y1, x2, y2 in labels:
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            # without geometry the output is an integer crop of the canvas, so boxes land on exact pixels
            assert (im[int(y1) : int(y2), int(x1) : int(x2)] == 100 + 40 * cls).all()
            assert x1 == int(x1) and y2 == int(y2)
        n_labels += len(labels)
    assert n_labels >= 20


def test_mosaic_with_scratch_low_geometry():
    load_image, labels_of = tile_loaders()
    rng = np.random.default_rng(0)
    for _ in range(10):
        im, labels = load_mosaic([0, 1, 2, 3], load_image, labels_of, 64, SCRATCH_LOW_GEOMETRY, rng)
        assert im.shape == (64, 64, 3)
        assert labels.shape[1] == 5 and set(labels[:, 0]) <= {0, 1, 2, 3}
        assert (labels[:, 1:] >= 0).all() and (labels[:, [1, 3]] <= 64).all() and (labels[:, [2, 4]] <= 64).all()


def test_mixup_blends_and_concatenates():
    im, im2 = np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 200, np.uint8)
    labels, labels2 = np.array([[0, 1, 1, 3, 3]], float), np.array([[1, 2, 2, 5, 5], [2, 0, 0, 1, 1]], float)
    out, out_labels = mixup(im, labels, im2, labels2, np.random.default_rng(0))
    np.testing.assert_array_equal(out_labels, np.concatenate((labels, labels2)))
    assert len(np.unique(out)) == 1 and 120 < out[0, 0, 0] < 180  # Beta(32, 32) weight is close to 0.5


def test_augment_hsv_zero_gains_leave_the_image():
    im = noise_image(16, 16)
    before = im.copy()
    augment_hsv(im, 0.0, 0.0, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(im, before)


def test_augment_hsv_value_gain_on_grey():
    im = np.full((4, 4, 3), 100, dtype=np.uint8)
    augment_hsv(im, 0.015, 0.7, 0.4, np.random.default_rng(3))
    gain = np.random.default_rng(3).uniform(-1, 1, 3)[2] * 0.4 + 1  # value factor; hue and saturation of grey are 0
    assert gain != 1
    assert (im == int(100 * gain)).all()


def test_augment_hsv_writes_through_a_view():
    big = np.full((4, 8, 3), 100, dtype=np.uint8)
    augment_hsv(big[:, ::2], 0.0, 0.0, 0.4, np.random.default_rng(3))
    gain = np.random.default_rng(3).uniform(-1, 1, 3)[2] * 0.4 + 1
    assert (big[:, ::2] == int(100 * gain)).all() and (big[:, 1::2] == 100).all()


def test_copy_paste_mirrors_one_box_on_the_left():
    im = noise_image(60, 100)
    before = im.copy()
    labels = np.array([[3, 10, 20, 40, 50]], dtype=np.float64)
    out, out_labels = copy_paste(im, labels, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out_labels, [[3, 10, 20, 40, 50], [3, 60, 20, 90, 50]])
    np.testing.assert_array_equal(out[20:50, 60:90], before[20:50, 10:40][:, ::-1])
    out[20:50, 60:90] = before[20:50, 60:90]
    np.testing.assert_array_equal(out, before)  # nothing else changed


def test_copy_paste_skips_a_box_that_overlaps_its_mirror():
    labels = np.array([[0, 40, 20, 62, 50]], dtype=np.float64)  # mirror (38..60) covers most of it
    out, out_labels = copy_paste(noise_image(60, 100), labels, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out_labels, labels)
