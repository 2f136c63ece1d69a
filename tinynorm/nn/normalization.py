"""Normalization layers: PyTorch's names, arguments, defaults and state_dict keys.

The layers hold the parameters (γ = `weight`, β = `bias`) and the running estimates; the math
lives in `tinynorm.ops.norms` (the functional forms, `F.batch_norm` and the like), which name a
`Statistic` for the one op `tinynorm.ops.normalize.Normalize`.
Every layer checks its input (dtype, rank, channels) before it changes any state, and a batch
without values (N = 0 or an empty spatial dim) gives an empty output and changes no state, not
even the step count (PyTorch counts it, which would skew momentum=None's cumulative average).
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..kernels.formulas import renorm_limits
from ..ops.normalize import check_dtype
from ..tensor import Tensor
from .module import Module, Parameter


def _check_rank(layer: Module, x: Tensor, ranks: tuple[int, ...]) -> None:
    if x.ndim not in ranks:
        expected = " or ".join(f"{r}D" for r in ranks)
        raise ValueError(
            f"{type(layer).__name__}: expected {expected} input, got {x.ndim}D "
            f"input of shape {x.shape}"
        )


class _NormBase(Module):
    """Per-channel affine γ (ones) and β (zeros), and running estimates when tracked."""

    ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        scale: bool = True,
        estimates: tuple[str, ...] = ("running_mean", "running_var"),
    ):
        """`scale`: whether the affine has a γ (mean-only batch norm has β alone); `estimates`:
        the running buffers when tracked (the mean starts at 0, the others at 1)."""
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.register_parameter(
            "weight", Parameter(np.ones(num_features, np.float32)) if affine and scale else None
        )
        self.register_parameter(
            "bias", Parameter(np.zeros(num_features, np.float32)) if affine else None
        )
        self._estimates = estimates
        for name in estimates:
            init = np.zeros if name == "running_mean" else np.ones
            value = Tensor(init(num_features, np.float32)) if track_running_stats else None
            self.register_buffer(name, value)
        count = Tensor(np.zeros((), np.int64)) if track_running_stats else None
        self.register_buffer("num_batches_tracked", count)

    def reset_running_stats(self) -> None:
        """The running estimates as at construction: mean 0, the others 1, no batch counted."""
        for name in (*self._estimates, "num_batches_tracked"):
            buffer = self._buffers.get(name)
            if buffer is not None:
                buffer.data[...] = 0 if name in ("running_mean", "num_batches_tracked") else 1

    def _check(self, x: Tensor) -> None:
        check_dtype(type(self).__name__, x)
        _check_rank(self, x, self.ranks)
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}): expected "
                f"{self.num_features} channels, got input of shape {x.shape}"
            )

    def _is_step(self, x: Tensor) -> bool:
        """Whether this forward is a training step, which counts: training on a batch with
        values (an empty batch changes no state), or on any batch when synced (the ranks'
        pooled batch has values, and every rank's estimates move alike)."""
        return self.training and (x.numel() > 0 or self._sync_group() is not None)

    def _sync_group(self):
        """The process group whose ranks' batches a training step pools: none here (see
        `_Synced`)."""
        return None

    def _count_step(self, x: Tensor) -> float:
        """Count batch `x` when it is a training step (`num_batches_tracked` += 1) and return
        its weight in the running estimates: `momentum`, or 1/t for the cumulative average of
        all t batches so far when momentum is None."""
        if self._is_step(x) and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:
                return 1.0 / float(self.num_batches_tracked.data)
        return 0.0 if self.momentum is None else self.momentum

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class _Synced(_NormBase):
    """A norm with across-batch statistics that can pool the batches of every rank of a
    process group (`tinynorm.distributed`): batch norm, batch renorm and mean-only batch norm.
    Off (`sync = False`) unless the layer is a `SyncBatchNorm` or
    `SyncBatchNorm.convert_sync_batchnorm` turned it on. The per-sample norms (LayerNorm,
    InstanceNorm, GroupNorm, RMSNorm, FRN) need no sync: their statistics never leave a
    sample, so each rank already computes what one process would."""

    sync = False
    process_group = None  # with `sync`: this group, or the default one once initialized

    def _sync_group(self):
        """The group a training step pools over: None unless `sync`, training and more than
        one rank."""
        if not (self.sync and self.training):
            return None
        from .. import distributed

        group = self.process_group
        if group is None and distributed.is_initialized():
            group = distributed.group()
        return group if group is not None and group.size > 1 else None


class _BatchNorm(_Synced):
    """Batch normalization (Ioffe & Szegedy 2015): per channel over N and the spatial dims,
    y = (x - μ_B)/sqrt(σ²_B + ε)·γ + β in training, running estimates in eval;
    running_var follows the unbiased m/(m-1)·σ²_B; momentum=None: cumulative average."""

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        factor = self._count_step(x)
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return ops.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
            process_group=self._sync_group(),
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs."""

    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs."""

    ranks = (4,)


class SyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover the batches of every rank of a process group
    (`tinynorm.distributed`), PyTorch's `nn.SyncBatchNorm`: forward and backward equal one
    process's batch norm on all the ranks' batches concatenated, and every rank's running
    estimates move alike. Without an initialized group, in eval, or with one rank, it is
    `BatchNorm` (any input (N, C, ...))."""

    ranks = (2, 3, 4, 5)
    sync = True

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """`module` with every BatchNorm1d/2d inside it replaced by a SyncBatchNorm holding the
        same parameters and running estimates (the module itself when it is one), and every
        batch renorm and mean-only batch norm synced in place (`sync = True`)."""
        if isinstance(module, _Synced) and not isinstance(module, _BatchNorm):
            module.sync, module.process_group = True, process_group
            return module
        if isinstance(module, _BatchNorm) and not isinstance(module, cls):
            sync = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            like = next(t for t in (module.weight, module.running_mean) if t is not None)
            sync.to(like.dtype).load_state_dict(module.state_dict())
            sync.train(module.training)
            return sync
        for name, child in list(module._modules.items()):
            module._modules[name] = cls.convert_sync_batchnorm(child, process_group)
        return module


class _InstanceNorm(_NormBase):
    """Instance normalization (Ulyanov et al. 2016): per sample and channel over the spatial
    dims. PyTorch's defaults: no affine, no running estimates."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        factor = 0.0 if self.momentum is None else self.momentum  # as PyTorch: no step count
        return ops.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            factor,
            self.eps,
        )


class InstanceNorm1d(_InstanceNorm):
    ranks = (3,)


class InstanceNorm2d(_InstanceNorm):
    ranks = (4,)


class _BatchRenorm(_Synced):
    """Batch renormalization (Ioffe 2017): batch norm whose training output is corrected
    towards the moving averages by r = clip(σ_B/σ, 1/rmax, rmax), d = clip((μ_B - μ)/σ,
    -dmax, dmax), held constant in the backward pass; eval uses (x - μ)/σ.

    Buffers `running_mean` (μ) and `running_std` (σ) move at rate `momentum`. The limits follow
    the paper's schedule: rmax = 1 and dmax = 0 (plain batch norm) until `warmup_steps`, then
    linearly to `rmax` at `rmax_steps` and `dmax` at `dmax_steps`; with all three steps 0 the
    limits are constant from the start. `current_limits` gives the (rmax, dmax) in use.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup_steps: int = 5000,
        rmax_steps: int = 40000,
        dmax_steps: int = 25000,
    ):
        if momentum is None or not 0 < momentum <= 1:
            raise ValueError(f"BatchRenorm needs a momentum in (0, 1], got {momentum}")
        if rmax < 1 or dmax < 0:
            raise ValueError(f"need rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}")
        estimates = ("running_mean", "running_std")
        super().__init__(num_features, eps, momentum, affine, True, estimates=estimates)
        self.rmax, self.dmax = rmax, dmax
        self.warmup_steps, self.rmax_steps, self.dmax_steps = warmup_steps, rmax_steps, dmax_steps

    def scale_schedule(self, total_steps: int) -> None:
        """The paper's schedule (warm-up 5k, rmax at 40k, dmax at 25k of 40k steps) fitted to a
        run of `total_steps`: warm-up 1/8, rmax at the end, dmax at 5/8 of it."""
        self.warmup_steps, self.rmax_steps = total_steps // 8, total_steps
        self.dmax_steps = total_steps * 5 // 8

    @property
    def current_limits(self) -> tuple[float, float]:
        """(rmax, dmax) for the next training step (`kernels.formulas.renorm_limits`)."""
        step = float(self.num_batches_tracked.data)
        schedule = (self.warmup_steps, self.rmax_steps, self.dmax_steps, self.rmax, self.dmax)
        return renorm_limits(step, *schedule)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        y = ops.batch_renorm(
            x,
            self.running_mean,
            self.running_std,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
            self.rmax,
            self.dmax,
            step=self.num_batches_tracked.data,  # read by the statistics kernel, on its device
            warmup_steps=self.warmup_steps,
            rmax_steps=self.rmax_steps,
            dmax_steps=self.dmax_steps,
            process_group=self._sync_group(),
        )
        if self._is_step(x):
            self.num_batches_tracked.data += 1
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, rmax={self.rmax}, dmax={self.dmax}, "
            f"warmup_steps={self.warmup_steps}, rmax_steps={self.rmax_steps}, "
            f"dmax_steps={self.dmax_steps}"
        )


class BatchRenorm1d(_BatchRenorm):
    ranks = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    ranks = (4,)


class _MeanOnlyBatchNorm(_Synced):
    """Mean-only batch norm (Salimans & Kingma 2016), the companion of weight normalization:
    y = x - μ_B + β per channel (no division, no scale); eval subtracts the running mean."""

    def __init__(self, num_features: int, momentum: float | None = 0.1, affine: bool = True):
        estimates = ("running_mean",)
        super().__init__(
            num_features, 0.0, momentum, affine, True, scale=False, estimates=estimates
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        factor = self._count_step(x)
        return ops.mean_only_batch_norm(
            x,
            self.running_mean,
            self.bias,
            self.training,
            factor,
            process_group=self._sync_group(),
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, affine={self.affine}"


class MeanOnlyBatchNorm1d(_MeanOnlyBatchNorm):
    ranks = (2, 3)


class MeanOnlyBatchNorm2d(_MeanOnlyBatchNorm):
    ranks = (4,)


class GroupNorm(Module):
    """Group normalization (Wu & He 2018): per sample over groups of C/G consecutive channels
    and the spatial dims; G = 1 is LayerNorm with a per-channel affine, G = C InstanceNorm."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(
                f"GroupNorm: num_groups {num_groups} must divide num_channels {num_channels}"
            )
        self.num_groups, self.num_channels, self.eps, self.affine = (
            num_groups,
            num_channels,
            eps,
            affine,
        )
        self.register_parameter(
            "weight", Parameter(np.ones(num_channels, np.float32)) if affine else None
        )
        self.register_parameter(
            "bias", Parameter(np.zeros(num_channels, np.float32)) if affine else None
        )

    def forward(self, x: Tensor) -> Tensor:
        check_dtype("GroupNorm", x)
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"GroupNorm: expected input (N, {self.num_channels}, ...), got shape {x.shape}"
            )
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class LayerNorm(Module):
    """Layer normalization (Ba et al. 2016): per example over the last len(normalized_shape)
    dims, with an elementwise affine over normalized_shape."""

    def __init__(
        self,
        normalized_shape,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
    ):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape, self.eps = tuple(shape), eps
        self.elementwise_affine = elementwise_affine
        self.register_parameter(
            "weight",
            Parameter(np.ones(self.normalized_shape, np.float32)) if elementwise_affine else None,
        )
        self.register_parameter(
            "bias",
            Parameter(np.zeros(self.normalized_shape, np.float32))
            if elementwise_affine and bias
            else None,
        )

    def forward(self, x: Tensor) -> Tensor:
        check_dtype("LayerNorm", x)
        return ops.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class RMSNorm(Module):
    """RMSNorm (Zhang & Sennrich 2019), PyTorch's `nn.RMSNorm`: y = x/sqrt(⟨x²⟩ + ε)·γ with
    ⟨x²⟩ over the last len(normalized_shape) dims of each example (no mean subtracted, no β);
    γ elementwise over normalized_shape (ones); eps=None: the input dtype's machine epsilon."""

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        self.normalized_shape, self.eps = tuple(shape), eps
        self.elementwise_affine = elementwise_affine
        weight = (
            Parameter(np.ones(self.normalized_shape, np.float32)) if elementwise_affine else None
        )
        self.register_parameter("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        check_dtype("RMSNorm", x)
        return ops.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class FilterResponseNorm2d(Module):
    """Filter response normalization with its thresholded linear unit (Singh & Krishnan 2019):
    ν² = ⟨x²⟩ over H×W per sample and channel, y = γ·x/sqrt(ν² + |ε|) + β, z = max(y, τ);
    γ (ones), β and τ (zeros) per channel. No batch statistics, no running estimates: training
    and eval compute the same. With `learnable_eps`, ε is a parameter (1,) starting at `eps`."""

    def __init__(self, num_features: int, eps: float = 1e-6, learnable_eps: bool = False):
        super().__init__()
        self.num_features, self.learnable_eps = num_features, learnable_eps
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.tau = Parameter(np.zeros(num_features, np.float32))
        self.eps = Parameter(np.full(1, eps, np.float32)) if learnable_eps else eps

    def forward(self, x: Tensor) -> Tensor:
        check_dtype(type(self).__name__, x)
        _check_rank(self, x, (4,))
        return ops.filter_response_norm(x, self.weight, self.bias, self.tau, self.eps)

    def extra_repr(self) -> str:
        eps = float(self.eps.data[0]) if self.learnable_eps else self.eps
        return f"{self.num_features}, eps={eps}, learnable_eps={self.learnable_eps}"


class BatchInstanceNorm2d(_NormBase):
    """Batch-instance normalization (Nam & Kim 2018): y = (ρ·x̂_BN + (1 - ρ)·x̂_IN)·γ + β with a
    learned gate ρ per channel, initialized to 1 (pure batch norm) and kept in [0, 1] (clipped
    in place by each forward's statistics kernel). x̂_BN uses batch statistics in training,
    running estimates in eval; x̂_IN always the sample's own."""

    ranks = (4,)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.rho = Parameter(np.ones(num_features, np.float32))

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        factor = self._count_step(x)
        use_batch = self.training or self.running_mean is None
        return ops.batch_instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.rho,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )


class SwitchableNorm2d(_NormBase):
    """Switchable normalization (Luo et al. 2018): the statistics are softmax-weighted mixtures
    of instance, layer and batch statistics, μ = Σ_k softmax(λ)_k μ_k and σ² = Σ_k
    softmax(λ')_k σ²_k for k = (IN, LN, BN), y = γ (x - μ)/sqrt(σ² + ε) + β. The importance
    logits λ = `mean_weight`, λ' = `var_weight` start equal (ones). The LN and BN moments are
    derived from the IN moments, so one pass over the data serves all three; the BN part uses
    running estimates in eval."""

    ranks = (4,)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.mean_weight = Parameter(np.ones(3, np.float32))
        self.var_weight = Parameter(np.ones(3, np.float32))

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        factor = self._count_step(x)
        use_batch = self.training or self.running_mean is None
        return ops.switchable_norm(
            x,
            self.mean_weight,
            self.var_weight,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )


class BatchLayerNorm(_NormBase):
    """Batch-layer normalization (Ziaee & Çano 2022, arXiv 2209.08898).

    Specification (from the paper and its authors' reference code, fitted to tinynorm's
    patterns): with x̂_BN normalized per channel over N and the spatial dims (batch norm) and
    x̂_LN per example over all channels and spatial dims (layer norm), each with ε added to
    the variance, and m the training mini-batch size,

        y = γ · ((1/m - δ)·x̂_LN + (1 - 1/m - δ)·x̂_BN) / sqrt(C) + β,   δ = 1e-4,

    so small batches lean on the example's own statistics and large batches on the batch's;
    γ, β are per channel (ones, zeros). The reference code takes ε = 1e-3 and divides by
    sqrt(C), the number of features; both are kept here. At inference the batch part uses
    population statistics (`running_mean`, `running_var`, updated like BatchNorm's; momentum=
    None gives the cumulative average the paper uses) or, with `eval_batch_stats=True`, the
    statistics of the batch at hand — the paper's two inference options. m at inference is the
    last training batch size (buffer `batch_size`), so the mix does not change with the size
    of the test batch.

    Differences from the reference code: it computes batch statistics per feature position
    and layer statistics over the last axis only; here they use the BN and LN patterns of the
    other tinynorm layers (per channel; per example), as the specification of tinynorm asks.
    """

    ranks = (2, 3, 4)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-3,
        momentum: float | None = 0.1,
        affine: bool = True,
        eval_batch_stats: bool = False,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        self.eval_batch_stats = eval_batch_stats
        self.register_buffer("batch_size", Tensor(np.zeros((), np.int64)))

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        factor = self._count_step(x)
        m, step = x.shape[0], self._is_step(x)
        if not self.training:  # the training batch size, read back once per eval call
            m = int(self.batch_size.data) or m
        fixed = not self.training and not self.eval_batch_stats
        return ops.batch_layer_norm(
            x,
            self.running_mean if self.training or fixed else None,
            self.running_var,
            self.weight,
            self.bias,
            not fixed,
            factor,
            self.eps,
            batch_size=m,
            size_buffer=self.batch_size if step else None,  # the kernel records N there
        )
