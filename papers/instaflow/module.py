"""InstaFlow — One Step is Enough for High-Quality Diffusion-Based Text-to-Image Generation
(Liu, Zhang, Ma, Peng & Liu, ICLR 2024).

The text-conditioned pipeline (Sec. 3): a conditional teacher sampled with classifier-free guidance
generates coupled ``(noise, image, condition)`` pairs; *text-conditioned reflow* trains a 2-rectified flow
on them; the 2-RF's own pairs are then *distilled* into a one-step model. The paper's comparison: distilling
the 2-RF is far better than distilling the teacher's pairs directly ("distill(1-RF)").

Here the condition is a digit class label (with a null label for guidance); the module is the shared
rectified-flow module (``shared.methods.flow_module``) with ``num_classes`` on the network.
"""

from __future__ import annotations

from shared.methods.flow_module import RectifiedFlowModule


class InstaFlow(RectifiedFlowModule):
    """Conditional rectified flow / reflow (``stage: flow``) or one-step distillation (``stage: distill``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not getattr(self.net, "num_classes", None):
            raise ValueError("InstaFlow is conditional: build the network with num_classes")
