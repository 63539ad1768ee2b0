"""``BatchNorm``: a drop-in for ``flax.linen.BatchNorm`` with ghost (virtual) batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.nn import initializers

from jaxreg.functional.batchnorm import batch_norm, check_feature_shape, feature_axes

__all__ = ["BatchNorm"]


class BatchNorm(nn.Module):
    """Batch normalization (optionally over ghost batches), drop-in for ``flax.linen.BatchNorm``.

    Per feature, with ``mu_B, var_B`` the mean and biased variance of the batch
    over every axis but ``axis`` (training) or the running ``mean, var`` kept in
    ``batch_stats`` (inference)::

        y    = scale * (x - mu_B) / sqrt(var_B + epsilon) + bias
        mean <- momentum * mean + (1 - momentum) * mu_B     (training, when mutable)
        var  <- momentum * var  + (1 - momentum) * var_B

    Same fields, defaults, collections and variable names as flax (``params``:
    ``scale``, ``bias``; ``batch_stats``: ``mean``, ``var``, float32), and the
    same rules: ``use_running_average`` is given here or in ``__call__`` (not
    both); the running statistics are never updated during ``init`` (the batch
    statistics still normalize its output, and ``axis_name`` is ignored there,
    so ``init`` runs outside ``shard_map``/``pmap``); a training call updates
    them only when ``batch_stats`` is mutable, and without ``mutable`` flax's
    ``ModifyScopeVariableError`` is raised, exactly as with flax. The maths is
    :func:`jaxreg.functional.batch_norm`.

    Extra field ``virtual_batch_size``: ghost batch norm (Hoffer et al. 2017).
    In training, axis 0 is split into contiguous groups of that many examples,
    each normalized with its own statistics; the running statistics step
    towards the mean over groups of the group mean and variance (as TF/Keras).
    It is a reshape, so it works under ``jit`` with the batch sharded, where
    flax's BatchNorm cannot form per-group statistics. With ``axis_name`` the
    groups are formed from each device's local batch. Inference ignores it.

    One deliberate difference: with ``dtype=None`` the output has the dtype of
    ``x`` (bf16 in, bf16 out), where flax promotes with the parameters (bf16
    ``x`` and float32 ``scale`` give float32). Statistics stay float32 either way.

    Attributes:
      use_running_average: if True, normalize with the stored statistics.
      axis: feature axis (or tuple of axes); default ``-1``.
      momentum: decay of the running statistics, in [0, 1]; default 0.99.
      epsilon: added to the variance, >= 0; default 1e-5.
      dtype: output dtype (default: that of the input).
      param_dtype: dtype of ``scale``/``bias`` (default float32).
      use_bias: learn a per-feature ``bias`` (beta).
      use_scale: learn a per-feature ``scale`` (gamma).
      bias_init: initializer of ``bias`` (zeros).
      scale_init: initializer of ``scale`` (ones).
      axis_name: mapped axis to average statistics over under
        ``shard_map``/``pmap`` (not needed under ``jit`` with a sharded batch).
      axis_index_groups: groups of ``axis_name`` indices reduced separately.
      use_fast_variance: one-pass ``E[x^2] - E[x]^2`` if True.
      force_float32_reductions: reduce in at least float32 (default True); if
        False, in ``dtype``/the input dtype and store statistics in
        ``param_dtype`` (as flax).
      virtual_batch_size: ghost batch size (static int dividing the batch), or
        None for ordinary batch norm.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxreg.nn import BatchNorm
      >>> x = jnp.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])
      >>> bn = BatchNorm(momentum=0.9, virtual_batch_size=2)
      >>> variables = bn.init(jax.random.key(0), x, use_running_average=False)
      >>> variables["batch_stats"]["var"]  # init never updates the statistics
      Array([1., 1.], dtype=float32)
      >>> y, updates = bn.apply(variables, x, use_running_average=False,
      ...                       mutable=["batch_stats"])
      >>> y[:, 0].tolist()  # rows {0, 1} and {2, 3} normalized separately
      [-1.0, 1.0, -1.0, 1.0]
      >>> updates["batch_stats"]["mean"]  # 0.1 * mean of the group means (3, 4)
      Array([0.3, 0.4], dtype=float32)
      >>> y = bn.apply(variables | updates, x, use_running_average=True)

    References:
      Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
      Reducing Internal Covariate Shift", ICML 2015.
      Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the
      generalization gap in large batch training of neural networks", NeurIPS 2017.
    """

    use_running_average: bool | None = None
    axis: int | Sequence[int] = -1
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    virtual_batch_size: int | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Normalize ``x``; update ``batch_stats`` when training and mutable (not in init).

        Args:
          x: input; statistics are per feature along ``axis``.
          use_running_average: if True, normalize with the stored statistics;
            give it here or as the field, not both (as flax).
          mask: optional bool array broadcastable to ``x``; only ``True``
            positions enter the batch statistics.

        Returns:
          The normalized ``x`` (same shape; dtype ``dtype`` or that of ``x``).
        """
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        x = jnp.asarray(x)
        if x.ndim == 0:
            raise ValueError("BatchNorm needs an input with a batch axis, got a scalar.")
        feat = feature_axes(self.axis, x.ndim)
        feature_shape = tuple(x.shape[a] for a in feat)
        stat_dtype = jnp.float32 if self.force_float32_reductions else self.param_dtype

        ra_mean = self.variable(
            "batch_stats", "mean", lambda s: jnp.zeros(s, stat_dtype), feature_shape
        )
        ra_var = self.variable(
            "batch_stats", "var", lambda s: jnp.ones(s, stat_dtype), feature_shape
        )
        for name, var in (("mean", ra_mean), ("var", ra_var)):
            check_feature_shape(f"batch_stats '{name}'", var.value, x.shape, feat, self.axis)
        scale = bias = None
        if self.use_scale:
            scale = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, feature_shape, self.param_dtype)

        initializing = self.is_initializing()
        y, new_mean, new_var = batch_norm(
            x,
            ra_mean.value,
            ra_var.value,
            scale=scale,
            bias=bias,
            use_running_average=use_running_average,
            momentum=self.momentum,
            epsilon=self.epsilon,
            axis=self.axis,
            # init may run outside the mapped program, as in flax.
            axis_name=None if initializing else self.axis_name,
            axis_index_groups=None if initializing else self.axis_index_groups,
            virtual_batch_size=self.virtual_batch_size,
            use_fast_variance=self.use_fast_variance,
            mask=mask,
            dtype=self.dtype,
            force_float32_reductions=self.force_float32_reductions,
        )
        if not use_running_average and not initializing:
            # Raises flax's ModifyScopeVariableError unless batch_stats is mutable.
            ra_mean.value = new_mean
            ra_var.value = new_var
        return y
