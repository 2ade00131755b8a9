"""Rectified flow — Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow
(Liu, Gong & Liu, ICLR 2023).

A velocity field ``v`` is regressed on straight interpolations ``X_t = t X_1 + (1 - t) X_0`` of a coupling
``(X_0, X_1)`` (Eq. 1); its ODE ``dZ/dt = v(Z, t)`` is the *rectified flow*. *Reflow* (Algorithm 1) re-couples
``X_0`` with the flow's own output ``Z_1 = ODE(X_0)`` and trains again: the k-th flow's paths get straighter
(straightness ``S(Z)``, Eq. 4, ``shared.metrics.straightness``), so few Euler steps suffice; *distillation*
(Sec. 2.3) fits the one-step map ``z -> z + v(z, 0)`` to the pairs. ``X_0`` is Gaussian noise (generation) or
samples of a second distribution (transfer, ``batch["source"]``).

Everything lives in the shared core: the objective and pairs in ``shared.diffusion.flow``, the stages in
``shared.methods.flow_module.RectifiedFlowModule``; this class only names the paper.
"""

from __future__ import annotations

from shared.methods.flow_module import RectifiedFlowModule


class RectifiedFlow(RectifiedFlowModule):
    """k-rectified flow (``stage: flow``, coupling from the batch) or its one-step distillation (``stage:
    distill``)."""
