"""A simple domain shift of the MovingDigits world for Video LDM's transfer check (Sec. 4.1.2, Fig. 6).

The paper plugs its temporal layers into image LDMs fine-tuned on another style (DreamBooth). Here the
"style" is a digit subset: :class:`DigitSubsetMovingDigits` draws only the digit classes in ``digits``
(same canvas, motion, splits and seeding as :class:`shared.data.video_worlds.MovingDigits`), so the video
judge's digit head measures how much of the fine-tuned domain a generated video keeps.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.data.video_worlds import MovingDigits


class DigitSubsetMovingDigits(MovingDigits):
    """MovingDigits restricted to the digit classes ``digits`` (train and test images of those classes)."""

    def __init__(self, *args, digits: Sequence[int] = (0, 1, 2, 3, 4), **kwargs):
        super().__init__(*args, **kwargs)
        self.digits = tuple(int(d) for d in digits)
        keep = np.isin(self._labels, np.asarray(self.digits))
        if not keep.any():
            raise ValueError(f"no digit images of classes {self.digits} in this split")
        self._images, self._labels = self._images[keep], self._labels[keep]
