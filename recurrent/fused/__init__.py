"""The fast path: the recurrence with a hand-written backward pass, as cuDNN's and
oneDNN's RNN kernels do, for cells that declare a :class:`recurrent.cell.FastPath`.

It serves any cell whose step is ``hh = (h * m) @ w_hh`` followed by pointwise maths and
whose input half is ``(x * m) @ w_ih``, as the cell declares: the LSTM and the reset-after
GRU. The driver uses plain autodiff of ``lax.scan`` for every other cell, and for one
recurrent mask per gate and :func:`recurrent.trace`.

* :mod:`recurrent.fused.policy`: which layout the forward alone uses (measured rules);
* :mod:`recurrent.fused.layouts`: the forward alone in each layout;
* :mod:`recurrent.fused.vjp`: the forward under ``grad`` and the backward pass;
* ``recurrent.fused.loops``: what their loops share.
"""

from recurrent.fused.layouts import Plan
from recurrent.fused.loops import hold, vary_like, varying_axes
from recurrent.fused.vjp import recurrence

__all__ = ["Plan", "hold", "recurrence", "vary_like", "varying_axes"]
