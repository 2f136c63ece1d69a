"""The functional norm layers (PyTorch's names and signatures where PyTorch has them).

Each variant is a few lines: check the input, name the `Statistic` it normalizes with, and hand
the `Normalize` op either nothing more (batch statistics, computed and differentiated in the op),
a `report` that moves the running estimates, or the running estimates as `fixed` constants. An
input without values (N = 0 or an empty spatial dim) is checked like any other, then gives the
`empty` op's empty output, as in PyTorch: no statistics, and no running estimate moves.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from ..kernels import Mixture
from ..tensor import Tensor
from . import elementwise
from .normalize import Normalize, Renorm, Running, Statistic, check_dtype, empty
from .normalize_mixed import mixed_normalize

PER_CHANNEL = Statistic(across_batch=True)  # batch norm: per channel over N and S
PER_ROW = Statistic()  # instance norm: per sample and channel; layer norm on (N, 1, S)


def channel_dims(x: Tensor, op: str, **per_channel: Tensor | None) -> tuple[int, int, int]:
    """(N, C, S) for an input (N, C, *spatial), or an error naming what is wrong with it or
    with one of the `per_channel` tensors (weight, bias, running estimates), which must be (C,)."""
    check_dtype(op, x)
    shape = x.shape
    if len(shape) < 2:
        raise ValueError(f"{op}: expected an input (N, C, ...), got shape {shape}")
    n, c = shape[:2]
    for name, t in per_channel.items():
        if t is None or tuple(t.shape) == (c,):
            continue
        if t.ndim != 1:
            raise ValueError(f"{op}: {name} must have shape ({c},), got {tuple(t.shape)}")
        raise ValueError(
            f"{op}: expected {len(t)} channels ({name} has {len(t)}), got input of shape "
            f"{shape} with {c}"
        )
    return n, c, math.prod(shape[2:])


def last_dims(x: Tensor, op: str, normalized_shape) -> tuple[tuple[int, ...], tuple]:
    """normalized_shape as a tuple and the (M, 1, S) dims of an input ending with it, or an
    error naming both shapes."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    check_dtype(op, x)
    if k == 0 or x.ndim < k or tuple(x.shape[x.ndim - k :]) != shape:
        raise ValueError(
            f"{op}: input of shape {x.shape} does not end with normalized_shape {shape}"
        )
    return shape, (math.prod(x.shape[: x.ndim - k]), 1, math.prod(shape))


def _rstd(var: Tensor, eps: float):
    return 1.0 / np.sqrt(var.data.astype(np.float64) + eps) if var is not None else None


def running_update(running_mean, running_var, momentum: float) -> Running | None:
    """The `report` of a training step: the running mean and the unbiased variance m/(m-1)·σ²
    (m values a statistic) move by `momentum` towards this batch's (the average over the
    samples for per-sample statistics); None when there are no running estimates."""
    return None if running_mean is None else Running(running_mean, running_var, momentum)


def _need_running(op: str, *estimates: Tensor | None) -> None:
    """Normalizing with running estimates needs them: a clear error when one is None."""
    if any(e is None for e in estimates):
        raise ValueError(f"{op} without batch statistics needs its running estimates")


def _check_training_batch(x: Tensor, dims, synced: bool = False) -> None:
    """More than one value per channel, unless `synced` (the op checks the count over all
    ranks: this rank's batch may be small, even empty)."""
    if dims[0] * dims[2] == 1 and not synced:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input of shape {x.shape}"
        )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    process_group=None,
) -> Tensor:
    """y = (x - μ)/sqrt(σ² + ε)·γ + β per channel. Training: batch μ, σ² (biased), and the
    running estimates move by `momentum` towards μ and the unbiased m/(m-1)·σ². Eval: running.
    With a `process_group` (tinynorm's, for SyncBatchNorm), training pools the batches of all
    its ranks: each rank's moments gathered and merged exactly, the backward's per-channel sums
    summed over the ranks; dγ and dβ stay each rank's own (DDP averages them). A rank with an
    empty batch still joins both collectives, as in PyTorch."""
    estimates = {"running_mean": running_mean, "running_var": running_var}
    dims = channel_dims(input, "batch_norm", weight=weight, bias=bias, **estimates)
    synced = training and process_group is not None
    if input.numel() == 0 and not synced:
        return empty(input, weight, bias)
    if not training:
        _need_running("batch norm", running_mean, running_var)
        fixed = (running_mean.data, _rstd(running_var, eps))
        return Normalize.apply(input, weight, bias, dims=dims, statistic=PER_CHANNEL, fixed=fixed)
    _check_training_batch(input, dims, synced)
    report = running_update(running_mean, running_var, momentum)
    return Normalize.apply(
        input,
        weight,
        bias,
        dims=dims,
        statistic=PER_CHANNEL,
        eps=eps,
        report=report,
        group=process_group,
    )


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_std: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    rmax: float = 1.0,
    dmax: float = 0.0,
    *,
    step=None,
    warmup_steps: int = 0,
    rmax_steps: int = 0,
    dmax_steps: int = 0,
    process_group=None,
) -> Tensor:
    """Batch renormalization (Ioffe 2017), per channel, with moving μ and σ:
    train: x̂ = (x - μ_B)/σ_B·r + d, σ_B = sqrt(σ²_B + ε), r = clip(σ_B/σ, 1/rmax, rmax),
    d = clip((μ_B - μ)/σ, -dmax, dmax), r and d constant in the backward pass; then
    μ += momentum·(μ_B - μ), σ += momentum·(σ_B - σ).  eval: x̂ = (x - μ)/σ.
    The limits are rmax, dmax; or, given `step` (an int64 array, the steps done, read on its
    device), they follow the paper's schedule (`kernels.formulas.renorm_limits`): (1, 0) until
    `warmup_steps`, then linear to rmax at `rmax_steps` and dmax at `dmax_steps`.
    A `process_group` pools μ_B and σ_B over its ranks' batches, as in `batch_norm`."""
    estimates = {"running_mean": running_mean, "running_std": running_std}
    dims = channel_dims(input, "batch_renorm", weight=weight, bias=bias, **estimates)
    synced = training and process_group is not None
    if input.numel() == 0 and not synced:
        return empty(input, weight, bias)
    _need_running("batch_renorm", running_mean, running_std)
    if not training:
        fixed = (running_mean.data, 1.0 / running_std.data.astype(np.float64))
        return Normalize.apply(input, weight, bias, dims=dims, statistic=PER_CHANNEL, fixed=fixed)
    _check_training_batch(input, dims, synced)
    if step is None:  # constant limits
        step = get_array_module(input.data).zeros(1, np.int64)
        warmup_steps = rmax_steps = dmax_steps = 0
    schedule = (warmup_steps, rmax_steps, dmax_steps, rmax, dmax)
    renorm = Renorm(running_mean, running_std, momentum, step, tuple(map(float, schedule)))
    return Normalize.apply(
        input,
        weight,
        bias,
        dims=dims,
        statistic=PER_CHANNEL,
        eps=eps,
        renorm=renorm,
        group=process_group,
    )


def mean_only_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    *,
    process_group=None,
) -> Tensor:
    """Mean-only batch norm (Salimans & Kingma 2016): y = x - μ + β per channel, no division;
    μ is the batch mean in training (the running mean moves towards it), the running mean in
    eval. A `process_group` pools μ over its ranks' batches, as in `batch_norm`."""
    dims = channel_dims(input, "mean_only_batch_norm", bias=bias, running_mean=running_mean)
    synced = training and process_group is not None
    if input.numel() == 0 and not synced:
        return empty(input, bias)
    statistic = PER_CHANNEL._replace(scaled=False)
    if not training:
        _need_running("mean_only_batch_norm", running_mean)
        return Normalize.apply(
            input, None, bias, dims=dims, statistic=statistic, fixed=(running_mean.data, 1.0)
        )
    _check_training_batch(input, dims, synced)
    report = running_update(running_mean, None, momentum)
    return Normalize.apply(
        input, None, bias, dims=dims, statistic=statistic, report=report, group=process_group
    )


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """y = (x - μ)/sqrt(σ² + ε)·γ + β with μ, σ² over the spatial dims of each sample and
    channel. Running estimates, when given, move towards the batch average of the instance
    means and unbiased variances; with use_input_stats=False they replace the instance stats."""
    estimates = {"running_mean": running_mean, "running_var": running_var}
    dims = channel_dims(input, "instance_norm", weight=weight, bias=bias, **estimates)
    if use_input_stats and dims[2] == 1:
        raise ValueError(
            f"instance_norm: expected more than 1 spatial value per channel, got input of shape "
            f"{input.shape}"
        )
    if input.numel() == 0:
        return empty(input, weight, bias)
    if not use_input_stats:
        _need_running("instance_norm", running_mean, running_var)
        fixed = (running_mean.data, _rstd(running_var, eps))
        return Normalize.apply(input, weight, bias, dims=dims, statistic=PER_ROW, fixed=fixed)
    report = running_update(running_mean, running_var, momentum)
    return Normalize.apply(
        input, weight, bias, dims=dims, statistic=PER_ROW, eps=eps, report=report
    )


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """y = (x - μ)/sqrt(σ² + ε)·γ + β with μ, σ² over each sample's group of C/G consecutive
    channels and all spatial positions; γ, β per channel."""
    dims = channel_dims(input, "group_norm", weight=weight, bias=bias)
    C = dims[1]
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: num_groups {num_groups} must divide the {C} channels")
    if input.numel() == 0:
        return empty(input, weight, bias)
    statistic = Statistic(channels=C // num_groups)
    return Normalize.apply(input, weight, bias, dims=dims, statistic=statistic, eps=eps)


def layer_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """y = (x - μ)/sqrt(σ² + ε)·γ + β with μ, σ² over the last len(normalized_shape) dims of
    each example; γ, β elementwise over normalized_shape."""
    _, dims = last_dims(input, "layer_norm", normalized_shape)
    if input.numel() == 0:
        return empty(input, weight, bias)
    elementwise = weight is not None or bias is not None
    return Normalize.apply(
        input, weight, bias, dims=dims, statistic=PER_ROW, eps=eps, elementwise=elementwise
    )


def rms_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """RMSNorm (Zhang & Sennrich 2019), PyTorch's `F.rms_norm`: y = x/sqrt(⟨x²⟩ + ε)·γ with
    ⟨x²⟩ over the last len(normalized_shape) dims of each example; γ elementwise over
    normalized_shape; eps=None takes the machine epsilon of the input's dtype."""
    _, dims = last_dims(input, "rms_norm", normalized_shape)
    if input.numel() == 0:
        return empty(input, weight)
    eps = float(np.finfo(input.dtype).eps) if eps is None else eps
    statistic = PER_ROW._replace(centered=False)
    return Normalize.apply(
        input, weight, None, dims=dims, statistic=statistic, eps=eps, elementwise=True
    )


def filter_response_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None,
    eps: float | Tensor = 1e-6,
) -> Tensor:
    """Filter response normalization with its thresholded linear unit (Singh & Krishnan 2019):
    ν² = ⟨x²⟩ over the spatial dims of each sample and channel, y = γ·x/sqrt(ν² + |ε|) + β,
    z = max(y, τ); γ, β, τ per channel. `eps` is a number or a learned (1,) tensor."""
    dims = channel_dims(input, "filter_response_norm", weight=weight, bias=bias, tau=tau)
    if input.numel() == 0:
        return empty(input, weight, bias, tau, eps if isinstance(eps, Tensor) else None)
    statistic = PER_ROW._replace(centered=False)
    if isinstance(eps, Tensor):
        learned, eps = elementwise.abs(eps), 0.0
    else:
        learned, eps = None, abs(eps)
    y = Normalize.apply(input, weight, bias, learned, dims=dims, statistic=statistic, eps=eps)
    return y if tau is None else elementwise.tlu(y, tau)


def batch_instance_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    rho: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch-instance norm (Nam & Kim 2018): y = (ρ·x̂_BN + (1 - ρ)·x̂_IN)·γ + β, ρ per channel,
    clipped to [0, 1] in place first (as the layer keeps it); x̂_BN uses batch statistics in
    training and the running estimates in eval."""
    estimates = {"running_mean": running_mean, "running_var": running_var}
    dims = channel_dims(
        input, "batch_instance_norm", rho=rho, weight=weight, bias=bias, **estimates
    )
    if input.numel() == 0:
        return empty(input, weight, bias, rho)
    mixture, running = _batch_part(input, dims, running_mean, running_var, training, momentum)
    return mixed_normalize(
        input, weight, bias, dims=dims, mixture=mixture, eps=eps, running=running, gate=rho
    )


def _batch_part(input, dims, running_mean, running_var, training, momentum):
    """A mixture's BN statistics, as (`kernels.Mixture`, running): the batch's in training
    (moving the running estimates, when given, by `momentum`), the running estimates in eval."""
    running = None if running_mean is None else (running_mean.data, running_var.data, momentum)
    if not training:
        _need_running("batch norm", running_mean, running_var)
        return Mixture(bn_fixed=True), running
    _check_training_batch(input, dims)
    return Mixture(), running


def batch_layer_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-3,
    batch_size: int | None = None,
    delta: float = 1e-4,
    size_buffer: Tensor | None = None,
) -> Tensor:
    """Batch-layer norm (Ziaee & Çano 2022), see `tinynorm.nn.BatchLayerNorm`:
    y = γ·((1/m - δ)·x̂_LN + (1 - 1/m - δ)·x̂_BN)/sqrt(C) + β, m = `batch_size` (default N).
    As in `batch_norm`: batch statistics in training (updating the running estimates when
    given), the running estimates otherwise. `size_buffer`, an int64 tensor, receives N (the
    layer's record of its training batch size), written by the statistics kernel."""
    estimates = {"running_mean": running_mean, "running_var": running_var}
    dims = channel_dims(input, "batch_layer_norm", weight=weight, bias=bias, **estimates)
    if input.numel() == 0:
        return empty(input, weight, bias)
    N, C, _ = dims
    mixture, running = _batch_part(input, dims, running_mean, running_var, training, momentum)
    m = N if batch_size is None else batch_size
    weights = (0.0, (1 / m - delta) / math.sqrt(C), (1 - 1 / m - delta) / math.sqrt(C))
    size = None if size_buffer is None else size_buffer.data
    mixture = mixture._replace(has_ln=True, weights=weights, size=size)
    return mixed_normalize(
        input, weight, bias, dims=dims, mixture=mixture, eps=eps, running=running
    )


def switchable_norm(
    input: Tensor,
    mean_logits: Tensor,
    var_logits: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Switchable norm (Luo et al. 2018): μ = Σ_k softmax(λ)_k μ_k, σ² = Σ_k softmax(λ')_k σ²_k
    over k = (IN, LN, BN), y = γ (x - μ)/sqrt(σ² + ε) + β. The BN statistics are the batch's
    in training (updating the running estimates) and the running estimates in eval."""
    estimates = {"running_mean": running_mean, "running_var": running_var}
    dims = channel_dims(input, "switchable_norm", weight=weight, bias=bias, **estimates)
    if not training:
        _need_running("switchable_norm", running_mean, running_var)
    if training:
        _check_training_batch(input, dims)
    if input.numel() == 0:
        return empty(input, weight, bias, mean_logits, var_logits)
    mixture, running = _batch_part(input, dims, running_mean, running_var, training, momentum)
    mixture = mixture._replace(has_ln=True, switchable=True)
    return mixed_normalize(
        input,
        weight,
        bias,
        dims=dims,
        mixture=mixture,
        eps=eps,
        running=running,
        logits=(mean_logits, var_logits),
    )
