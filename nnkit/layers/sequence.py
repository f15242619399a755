"""``SequencePool``: a sequence (B, T, d) to one vector (B, d) per sequence, its padding left out."""
from __future__ import annotations

from typing import Any

from ..backends.functional import Array, device_of
from .core import Layer, ShapeError, own_torch_class

__all__ = ["SequencePool"]


def _sequence_pool_torch_class(nn):
    """The PyTorch module class of nnkit's SequencePool (``nnkit.export.pytorch.SequencePool``)."""
    class SequencePool(nn.Module):
        """y = mean or max of x (B, T, d) over its T steps (nnkit's SequencePool); with ``lengths`` (B,)
        over each sequence's valid steps only."""

        takes_lengths = True  # nnkit.export.pytorch.WithLengths hands it the batch's lengths

        def __init__(self, mode="mean"):
            super().__init__()
            self.mode = mode

        def forward(self, x, lengths=None):
            """The mean or the maximum over dim 1 (the valid steps of each sequence)."""
            if lengths is None:
                return x.mean(dim=1) if self.mode == "mean" else x.max(dim=1).values
            import torch

            m = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[:, :, None]
            if self.mode == "mean":
                return (x * m).sum(dim=1) / m.sum(dim=1).to(x.dtype)
            return x.masked_fill(~m, float("-inf")).max(dim=1).values

    return SequencePool


class SequencePool(Layer):
    r"""The mean or the maximum over a sequence's time steps: X (B, T, d) → Y (B, d), over the valid steps only
    when the sequences are padded (the mask m (B, T) of variable lengths; every step counts without one).

    * ``mode="mean"``: Y_b = Σ_t m_bt X_bt / n_b with n_b = Σ_t m_bt (the sequence's length).  Backward: each
      valid step receives an equal share, dX_bt = m_bt dY_b / n_b  (B, T, d).
    * ``mode="max"``: Y_bj = max_{t : m_bt = 1} X_btj (padded steps set to −∞ first).  Backward: the gradient
      goes to the step that gave the maximum, dX_btj = [t = argmax_t] dY_bj — the first such step on a tie,
      as ``torch.max(dim=1)`` picks it.
    """

    takes_mask = True

    def __init__(self, mode: str = "mean") -> None:
        super().__init__()
        if mode not in ("mean", "max"):
            raise ValueError(f"SequencePool mode must be 'mean' or 'max', got {mode!r}")
        self.mode = mode

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 2:
            raise ShapeError("expects (B, T, d) sequences")
        return in_shape[1:]

    def forward(self, X: Array, train: bool = True, mask: Array | None = None) -> Array:
        """Y (B, d): the mean or the max over the valid steps of X (B, T, d); keeps what backward needs."""
        xp = self.xp
        M = None if mask is None else xp.astype(mask, X.dtype)[:, :, None]  # (B, T, 1)
        if self.mode == "mean":
            n = float(X.shape[1]) if M is None else xp.sum(M, axis=1)  # (B, 1)
            Y = (xp.sum(X, axis=1) if M is None else xp.sum(X * M, axis=1)) / n
            if train:
                self._cache = (tuple(X.shape), M, n)
            return Y
        Xm = X if M is None else xp.where(M > 0, X, xp.asarray(-xp.inf, dtype=X.dtype, device=device_of(X)))
        idx = xp.argmax(Xm, axis=1)  # (B, d): the first step of the maximum
        if train:
            self._cache = (tuple(X.shape), idx, None)
        return xp.max(Xm, axis=1)

    def backward(self, dY: Array, need_dX: bool = True) -> Array | None:
        """mean: dX = m ⊙ dY / n; max: dX = onehot_t(argmax) ⊙ dY, both (B, T, d)."""
        if not need_dX:
            return None
        xp = self.xp
        shape, a, n = self._cache
        if self.mode == "mean":
            dX = xp.broadcast_to((dY / n)[:, None, :], shape)
            return dX if a is None else dX * a
        steps = xp.arange(shape[1], device=device_of(dY))[None, :, None]
        return xp.astype(steps == a[:, None, :], dY.dtype) * dY[:, None, :]

    def explain_forward(self, report, i, X, Y):
        formula = "Σ_t m_t X_t / Σ_t m_t" if self.mode == "mean" else "max over the valid t of X_t"
        report.add(f"Y{i} = {formula}   [{report.tag(i, self)}]", Y, f"A{i}")

    def explain_backward(self, report, i, dY, need_dX):
        dX = self.backward(dY, need_dX=need_dX)
        if dX is not None:
            formula = "m_t dY / n (each valid step an equal share)" if self.mode == "mean" \
                else "onehot_t(argmax) ⊙ dY (to the step that gave the maximum)"
            report.add(f"dX of layer {i} = {formula}   [{report.tag(i, self)}]", dX, f"dX{i}")
        return dX

    onnx_lengths = True  # to_onnx reads the exported graph's padding mask (export(lengths=True))

    def to_onnx(self, g, x):
        """``ReduceMean``/``ReduceMax`` over the time axis; with the graph's ``lengths`` input (``g.mask`` (B, T),
        1 at t < length) over the valid steps only: Σ_t m_t x_t / Σ_t m_t, or the max of x where m, −∞ elsewhere."""
        if g.mask is None:  # sequences of one length
            op = "ReduceMean" if self.mode == "mean" else "ReduceMax"
            return g.op(op, [x], f"sequence_{self.mode}", axes=[1], keepdims=0)
        m = g.op("Unsqueeze", [g.mask, g.ints([-1], "axes")], "mask_steps")  # (B, T, 1) bool
        if self.mode == "max":
            low = g.op("Where", [m, x, g.const(float("-inf"), "minus_inf")], "masked")
            return g.op("ReduceMax", [low], "sequence_max", axes=[1], keepdims=0)
        kept = g.op("Where", [m, x, g.const(0.0, "zero")], "masked")
        total = g.op("ReduceSum", [kept, g.ints([1], "time_axis")], "sequence_sum", keepdims=0)  # (B, d)
        n = g.op("ReduceSum", [g.op("Where", [m, g.const(1.0, "one"), g.const(0.0, "zero")], "valid"),
                               g.ints([1], "time_axis")], "length", keepdims=0)  # (B, 1)
        return g.op("Div", [total, n], "sequence_mean")

    @classmethod
    def torch_module(cls, nn):
        """``nnkit.export.pytorch.SequencePool``: the mean or max over dim 1 (PyTorch has no such module)."""
        return own_torch_class(cls, nn, _sequence_pool_torch_class)

    def to_torch(self, ctx):
        """An instance of :meth:`torch_module`."""
        return self.torch_module(ctx.nn)(self.mode)

    @classmethod
    def torch_classes(cls, nn):
        return (cls.torch_module(nn),)

    @classmethod
    def from_torch(cls, m, ctx):
        return cls(m.mode), {}, {}

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "mode": self.mode}
