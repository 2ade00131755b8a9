"""Gen-1's training items on the styled-shapes world (Esser et al. 2023, Sec. 3.3, Eq. 6).

Gen-1 trains on unlabelled videos: the structure ``s(x)`` and the content ``c(x)`` are both derived from the training
clip itself — depth estimates of its frames and the image embedding of *one of its frames* — so at sampling they can
come from different sources. :class:`Gen1Shapes` is :class:`shared.data.styled_shapes.StyledShapes` whose items also
carry

* ``source`` — the clip itself (the structure encoder estimates its depth, as MiDaS does in the paper);
* ``content`` — one frame of the clip, drawn per item from its own random stream (the content encoder embeds it).
"""
from __future__ import annotations

from shared.data.styled_shapes import StyledShapes


class Gen1Shapes(StyledShapes):
    """StyledShapes items plus ``source`` (the clip) and ``content`` (a random frame of it, (3, H, W))."""

    def _item(self, index: int, style_idx: int | None) -> dict:
        item = super()._item(index, style_idx)
        x = item["x"]
        if x.dim() == 4:  # (3, T, H, W); frames_only items are single frames (3, H, W)
            t = int(self._rng(index, stream=5).integers(x.shape[1]))
            item["content"] = x[:, t].clone()
        else:
            item["content"] = x.clone()
        item["source"] = x
        return item
