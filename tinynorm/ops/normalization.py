"""The functional norm layers (PyTorch's names and signatures where PyTorch has them).

Each variant is a few lines over `norm.py`: choose the `Pattern` its statistics pool, compute
batch statistics from the `row_moments` kernel or take running estimates, update the running
estimates in place, and call the one fused `normalize` op. The per-sample norms with batch
statistics (GroupNorm, LayerNorm, InstanceNorm without running estimates) call `normalize_runs`
instead, which computes their statistics in the same visit of each run as y. An input without
values (N = 0 or an empty spatial dim) is checked like any other, then gives the `empty` op's
empty output, as in PyTorch: no statistics, and no running estimate moves.
"""

from __future__ import annotations

import math

from .. import backend, kernels
from ..tensor import Tensor
from .norm import (
    NormalizeColumns,
    Part,
    Pattern,
    check_dtype,
    empty,
    normalize,
    normalize_runs,
    pooled_moments,
)
from .norm_mixed import mixed_normalize, switchable_normalize
from .shape import reshape
from .softmax import softmax


def nc_view(x: Tensor, op: str, **per_channel: Tensor | None) -> tuple[int, int, int]:
    """(N, C, S) for an input (N, C, *spatial), or an error naming what is wrong with it or
    with one of the `per_channel` tensors (weight, bias, running estimates), which must be (C,)."""
    check_dtype(op, x)
    if x.ndim < 2:
        raise ValueError(f"{op}: expected an input (N, C, ...), got shape {x.shape}")
    n, c = x.shape[:2]
    for name, t in per_channel.items():
        if t is None or tuple(t.shape) == (c,):
            continue
        if t.ndim != 1:
            raise ValueError(f"{op}: {name} must have shape ({c},), got {tuple(t.shape)}")
        raise ValueError(
            f"{op}: expected {len(t)} channels ({name} has {len(t)}), got input of shape "
            f"{x.shape} with {c}"
        )
    return n, c, math.prod(x.shape[2:])


def _rstd(var, eps: float):
    return 1.0 / backend.get_array_module(var).sqrt(var + eps)


def _blend(buffer: Tensor, value, momentum: float) -> None:
    """buffer ← (1 - momentum)·buffer + momentum·value, in place (a running estimate)."""
    buffer.data[...] = (1 - momentum) * buffer.data + momentum * value


def _check_training_batch(x: Tensor, view) -> None:
    if view[0] * view[2] == 1:
        raise ValueError(
            f"expected more than 1 value per channel when training, got input of shape {x.shape}"
        )


def _apply(input: Tensor, weight, bias, view, part: Part, **extra) -> Tensor:
    """The fused `normalize` op on one `Part`: batch statistics are differentiated, fixed
    ones are constants (`extra` may override grad_mode or add batch renorm's r and d)."""
    extra.setdefault("grad_mode", "mean_var" if part.batch else "none")
    return normalize(
        input,
        weight,
        bias,
        view=view,
        pattern=part.pattern,
        mean=part.mean,
        rstd=part.rstd,
        **extra,
    )


def _need_running(op: str, *estimates: Tensor | None) -> None:
    """Normalizing with running estimates needs them: a clear error when one is None."""
    if any(e is None for e in estimates):
        raise ValueError(f"{op} without batch statistics needs its running estimates")


def _fixed_part(view, pattern: Pattern, mean: Tensor, rstd) -> Part:
    """Running estimates (per channel) as the constant statistics of every row."""
    C = view[1]
    rstd = rstd.reshape(1, C) if hasattr(rstd, "reshape") else rstd  # an array or a number
    return Part(pattern, mean.data.reshape(1, C), rstd, batch=False)


def _update_running(
    running_mean: Tensor | None, running_var: Tensor | None, mean, var, m: int, momentum: float
) -> None:
    """Move the running mean and (unbiased, m/(m-1)·σ²) variance towards this batch's."""
    if running_mean is not None:
        _blend(running_mean, mean, momentum)
        _blend(running_var, var * (m / (m - 1)), momentum)


def _batch_part(
    input: Tensor,
    view,
    rows,
    running_mean,
    running_var,
    training: bool,
    momentum: float,
    eps: float,
) -> Part:
    """Batch norm's statistics: the batch's in training (from the row moments `rows`,
    updating the running estimates when given), the running estimates otherwise."""
    pattern = Pattern(view[1], True)
    if not training:
        _need_running("batch norm", running_mean, running_var)
        return _fixed_part(view, pattern, running_mean, _rstd(running_var.data, eps))
    _check_training_batch(input, view)
    mean, var = pooled_moments(*rows, view[2], pattern)
    _update_running(running_mean, running_var, mean[0], var[0], pattern.count(view), momentum)
    return Part(pattern, mean, _rstd(var, eps), batch=True)


def _sample_part(view, rows, pattern: Pattern, eps: float) -> Part:
    """Per-sample statistics (IN, GN, LN) from the row moments `rows`."""
    mean, var = pooled_moments(*rows, view[2], pattern)
    return Part(pattern, mean, _rstd(var, eps), batch=True)


def _row_moments(input: Tensor, view):
    return kernels.row_moments(input.data.reshape(view))


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """y = (x - μ)/sqrt(σ² + ε)·γ + β per channel. Training: batch μ, σ² (biased), and the
    running estimates move by `momentum` towards μ and the unbiased m/(m-1)·σ². Eval: running."""
    view = nc_view(
        input,
        "batch_norm",
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
    )
    N, _, S = view
    if input.numel() == 0:
        return empty(input, weight, bias)
    if S == 1 and N > 1:  # rows of one value: the channels are the columns of (N, C)
        return _batch_norm_columns(
            input, running_mean, running_var, weight, bias, training, momentum, eps
        )
    rows = _row_moments(input, view) if training else None
    part = _batch_part(input, view, rows, running_mean, running_var, training, momentum, eps)
    return _apply(input, weight, bias, view, part)


def _batch_norm_columns(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """`batch_norm` of an input with one value per channel and sample ((N, C), (N, C, 1, ...)),
    on the columns of its (N, C) view."""
    N, C = input.shape[:2]
    x = reshape(input, (N, C))
    if training:

        def report(mean, var) -> None:
            _update_running(running_mean, running_var, mean, var, N, momentum)

        y = NormalizeColumns.apply(x, weight, bias, eps=eps, report=report)
    else:
        _need_running("batch norm", running_mean, running_var)
        mean, var = running_mean.data, running_var.data
        y = NormalizeColumns.apply(x, weight, bias, eps=eps, mean=mean, var=var)
    return reshape(y, input.shape)


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
) -> Tensor:
    """Batch renormalization (Ioffe 2017), per channel, with moving μ and σ:
    train: x̂ = (x - μ_B)/σ_B·r + d, σ_B = sqrt(σ²_B + ε), r = clip(σ_B/σ, 1/rmax, rmax),
    d = clip((μ_B - μ)/σ, -dmax, dmax), r and d constant in the backward pass; then
    μ += momentum·(μ_B - μ), σ += momentum·(σ_B - σ).  eval: x̂ = (x - μ)/σ."""
    view = nc_view(
        input,
        "batch_renorm",
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_std=running_std,
    )
    if input.numel() == 0:
        return empty(input, weight, bias)
    pattern = Pattern(view[1], True)
    if not training:
        _need_running("batch_renorm", running_mean, running_std)
        part = _fixed_part(view, pattern, running_mean, 1.0 / running_std.data)
        return _apply(input, weight, bias, view, part)
    part = _batch_part(input, view, _row_moments(input, view), None, None, True, 0, eps)
    xp = backend.get_array_module(input.data)
    mu_b, sigma_b = part.mean[0], 1.0 / part.rstd[0]
    mu, sigma = running_mean.data, running_std.data
    r = xp.clip(sigma_b / sigma, 1 / rmax, rmax)
    d = xp.clip((mu_b - mu) / sigma, -dmax, dmax)
    _blend(running_mean, mu_b, momentum)
    _blend(running_std, sigma_b, momentum)
    return _apply(input, weight, bias, view, part, r=r, d=d)


def mean_only_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
) -> Tensor:
    """Mean-only batch norm (Salimans & Kingma 2016): y = x - μ + β per channel, no division;
    μ is the batch mean in training (the running mean moves towards it), the running mean in
    eval."""
    view = nc_view(input, "mean_only_batch_norm", bias=bias, running_mean=running_mean)
    if input.numel() == 0:
        return empty(input, bias)
    pattern = Pattern(view[1], True)
    if not training:
        _need_running("mean_only_batch_norm", running_mean)
        return _apply(input, None, bias, view, _fixed_part(view, pattern, running_mean, 1.0))
    _check_training_batch(input, view)
    mean, _ = pooled_moments(*_row_moments(input, view), view[2], pattern)
    if running_mean is not None:
        _blend(running_mean, mean[0], momentum)
    return _apply(input, None, bias, view, Part(pattern, mean, 1.0, True), grad_mode="mean")


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
    view = nc_view(
        input,
        "instance_norm",
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
    )
    _, C, S = view
    pattern = Pattern(C, False)
    if use_input_stats and S == 1:
        raise ValueError(
            f"instance_norm: expected more than 1 spatial value per channel, got input of shape "
            f"{input.shape}"
        )
    if input.numel() == 0:
        return empty(input, weight, bias)
    if not use_input_stats:
        _need_running("instance_norm", running_mean, running_var)
        part = _fixed_part(view, pattern, running_mean, _rstd(running_var.data, eps))
        return _apply(input, weight, bias, view, part)
    if running_mean is None:
        return normalize_runs(input, weight, bias, view=view, k=1, eps=eps)
    mean, var = pooled_moments(*_row_moments(input, view), S, pattern)
    _update_running(running_mean, running_var, mean.mean(axis=0), var.mean(axis=0), S, momentum)
    return _apply(input, weight, bias, view, Part(pattern, mean, _rstd(var, eps), True))


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """y = (x - μ)/sqrt(σ² + ε)·γ + β with μ, σ² over each sample's group of C/G consecutive
    channels and all spatial positions; γ, β per channel."""
    view = nc_view(input, "group_norm", weight=weight, bias=bias)
    C = view[1]
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"group_norm: num_groups {num_groups} must divide the {C} channels")
    if input.numel() == 0:
        return empty(input, weight, bias)
    return normalize_runs(input, weight, bias, view=view, k=C // num_groups, eps=eps)


def layer_norm(
    input: Tensor,
    normalized_shape,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """y = (x - μ)/sqrt(σ² + ε)·γ + β with μ, σ² over the last len(normalized_shape) dims of
    each example; γ, β elementwise over normalized_shape."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    check_dtype("layer_norm", input)
    if k == 0 or input.ndim < k or tuple(input.shape[input.ndim - k :]) != shape:
        raise ValueError(
            f"layer_norm: input of shape {input.shape} does not end with normalized_shape {shape}"
        )
    if input.numel() == 0:
        return empty(input, weight, bias)
    view = (math.prod(input.shape[: input.ndim - k]), 1, math.prod(shape))
    elementwise = weight is not None or bias is not None
    return normalize_runs(input, weight, bias, view=view, k=1, eps=eps, elementwise=elementwise)


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
    """Batch-instance norm (Nam & Kim 2018): y = (ρ·x̂_BN + (1 - ρ)·x̂_IN)·γ + β, ρ per channel;
    x̂_BN uses batch statistics in training and the running estimates in eval."""
    view = nc_view(
        input,
        "batch_instance_norm",
        rho=rho,
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
    )
    if input.numel() == 0:
        return empty(input, weight, bias, rho)
    rows = _row_moments(input, view)
    bn = _batch_part(input, view, rows, running_mean, running_var, training, momentum, eps)
    inst = _sample_part(view, rows, Pattern(view[1], False), eps)
    return mixed_normalize(input, weight, bias, (rho, 1 - rho), view=view, parts=(bn, inst))


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
) -> Tensor:
    """Batch-layer norm (Ziaee & Çano 2022), see `tinynorm.nn.BatchLayerNorm`:
    y = γ·((1/m - δ)·x̂_LN + (1 - 1/m - δ)·x̂_BN)/sqrt(C) + β, m = `batch_size` (default N).
    As in `batch_norm`: batch statistics in training (updating the running estimates when
    given), the running estimates otherwise."""
    view = nc_view(
        input,
        "batch_layer_norm",
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
    )
    if input.numel() == 0:
        return empty(input, weight, bias)
    N, C, _ = view
    xp = backend.get_array_module(input.data)
    rows = _row_moments(input, view)
    bn = _batch_part(input, view, rows, running_mean, running_var, training, momentum, eps)
    layer = _sample_part(view, rows, Pattern(1, False), eps)
    m = N if batch_size is None else batch_size
    w_bn, w_ln = [
        Tensor(xp.full(C, w / math.sqrt(C), input.dtype))
        for w in (1 - 1 / m - delta, 1 / m - delta)
    ]
    return mixed_normalize(input, weight, bias, (w_bn, w_ln), view=view, parts=(bn, layer))


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
    view = nc_view(
        input,
        "switchable_norm",
        weight=weight,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
    )
    C = view[1]
    if not training:
        _need_running("switchable_norm", running_mean, running_var)
    if training:
        _check_training_batch(input, view)
    if input.numel() == 0:
        return empty(input, weight, bias, mean_logits, var_logits)
    rows = _row_moments(input, view)  # IN's moments; LN's and BN's are pooled from them
    stats = [
        (p, *pooled_moments(*rows, view[2], p))
        for p in (Pattern(C, False), Pattern(1, False), Pattern(C, True))
    ]
    bn_pattern, bn_mean, bn_var = stats[2]
    if training:
        m = bn_pattern.count(view)
        _update_running(running_mean, running_var, bn_mean[0], bn_var[0], m, momentum)
    else:
        stats[2] = (bn_pattern, running_mean.data.reshape(1, C), running_var.data.reshape(1, C))
    return switchable_normalize(
        input,
        weight,
        bias,
        softmax(mean_logits, 0),
        softmax(var_logits, 0),
        view=view,
        stats=stats,
        batch=(True, True, training),
        eps=eps,
    )
