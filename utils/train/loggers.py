"""Training loggers beyond results.csv, as rows of a table: each writes what the trainer reports to one place.

TensorBoard (``tensorboard --logdir runs/train``): per epoch the scalars of results.csv under YOLOv5's tags
(``train/box_loss`` ... ``metrics/mAP_0.5:0.95`` ... ``x/lr0..2``, one learning rate per parameter group), the first
training-batch mosaics (``train_batch0..2``) and, at the end, the result plots (``results``, ``confusion_matrix``,
``PR_curve``, ...). Event files go into the run folder itself.
"""

from __future__ import annotations

from pathlib import Path

import cv2

from utils.log import LOGGER
from utils.train.setup import RESULT_KEYS

END_PLOTS = ("results.png", "confusion_matrix.png", "F1_curve.png", "PR_curve.png", "P_curve.png", "R_curve.png")


class TensorBoardLogger:
    """Scalars and images for TensorBoard, written with ``torch.utils.tensorboard.SummaryWriter`` into ``save_dir``."""

    name = "TensorBoard"

    def __init__(self, save_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(save_dir))
        LOGGER.info(f"TensorBoard: Start with 'tensorboard --logdir {save_dir.parent}', view at http://localhost:6006/")

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, float(v), step)

    def log_image(self, file: Path, step: int) -> None:
        """A jpg/png from the run folder as an image tagged by its stem; absent files are skipped."""
        im = cv2.imread(str(file)) if Path(file).is_file() else None  # OpenCV warns on stderr for a missing file
        if im is not None:
            self.writer.add_image(file.stem, im[..., ::-1].copy(), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


LOGGERS = {"tensorboard": TensorBoardLogger}


class TrainLoggers:
    """Every available logger of ``LOGGERS``; one that cannot start (package missing) is one warning, not a crash."""

    def __init__(self, save_dir: Path, include: tuple[str, ...] = tuple(LOGGERS)):
        self.save_dir, self.loggers = Path(save_dir), []
        for key in include:
            try:
                self.loggers.append(LOGGERS[key](self.save_dir))
            except ImportError as e:
                LOGGER.warning(f"WARNING ⚠️ {key} logging off: {e} (pip install -r requirements.txt)")

    def epoch_end(self, epoch: int, values: list[float]) -> None:
        """``values`` in results.csv order (``RESULT_KEYS``: 3 train losses, P, R, mAP50, mAP50-95, 3 val losses, lrs)."""
        scalars = dict(zip(RESULT_KEYS, values))
        for logger in self.loggers:
            logger.log_scalars(scalars, epoch)

    def image(self, file: Path, step: int) -> None:
        for logger in self.loggers:
            logger.log_image(file, step)

    def train_end(self, epoch: int) -> None:
        """The result plots, then close."""
        for logger in self.loggers:
            for name in END_PLOTS:
                logger.log_image(self.save_dir / name, epoch)
            logger.close()
