"""Every norm variant once more, as plain vectorized array code written from the papers'
formulas: the reference the tests check the layers against and the "numpy" rows of
`bench/kernels.py`. Nothing here uses the kernels or the autograd engine.

Each function takes a layer and an input x (N, C, *spatial), NumPy or CuPy on the layer's
device, and reads the layer's mode, parameters, buffers and settings (read only: no running
estimate moves). A layer in eval mode that tracks running estimates normalizes with them, as
constants. Without `dy` it returns y; with `dy` it returns (dx, {parameter name: gradient}),
the backward in closed form. Batch renorm reads its running estimates and `current_limits` as
the layer's next training step will.
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module


def standardize(x, axes, eps: float, centered: bool = True, fixed=None):
    """x̂ = (x - c)·ρ over `axes`: c = the mean (0 if not `centered`), ρ = 1/sqrt(⟨(x - c)²⟩ +
    ε); or (c, ρ) = `fixed`, running estimates broadcasting against x. Returns (x̂, c, ρ)."""
    if fixed is not None:
        mean, rstd = fixed
        return (x - mean) * rstd, mean, rstd
    mean = x.mean(axis=axes, keepdims=True) if centered else 0 * x.sum(axis=axes, keepdims=True)
    shifted = x - mean
    rstd = ((shifted * shifted).mean(axis=axes, keepdims=True) + eps) ** -0.5
    return shifted * rstd, mean, rstd


def standardize_grad(g, xhat, rstd, axes, centered: bool = True, fixed: bool = False):
    """dx for dL/dx̂ = g through `standardize`: with its statistics differentiated,
    dx = ρ·(g - ⟨g⟩ - x̂·⟨g·x̂⟩) (without ⟨g⟩ when not centered); with fixed ones, dx = ρ·g."""
    if fixed:
        return rstd * g
    mean_g = g.mean(axis=axes, keepdims=True) if centered else 0
    return rstd * (g - mean_g - xhat * (g * xhat).mean(axis=axes, keepdims=True))


def _running(layer, eps: float):
    """(c, ρ) per channel, (1, C, 1), from the running estimates when the layer normalizes with
    them (eval mode, estimates tracked); else None."""
    if layer.training or getattr(layer, "running_mean", None) is None:
        return None
    mean = _get(layer, "running_mean")
    if getattr(layer, "running_var", None) is not None:
        return mean, (_get(layer, "running_var") + eps) ** -0.5
    if getattr(layer, "running_std", None) is not None:
        return mean, 1 / _get(layer, "running_std")
    return mean, 1  # mean-only batch norm


def _sum_like(a, p):
    """The gradient of a broadcast parameter p: a summed over the axes where p has length 1."""
    axes = tuple(i for i, n in enumerate(p.shape) if n == 1 and a.shape[i] != 1)
    return a.sum(axis=axes, keepdims=True)


def _rows(a):
    """(N, C, S): the spatial dims of a (N, C, *spatial) array flattened; None stays None."""
    return None if a is None else a.reshape(a.shape[0], a.shape[1], -1)


def _get(layer, name: str, shape=(1, -1, 1)):
    """The layer's parameter or buffer `name` as an array of `shape`, or None."""
    t = getattr(layer, name, None)
    return None if t is None else t.data.reshape(shape)


def _affine_norm(x, dy, w, b, axes, eps: float, centered: bool = True, fixed=None):
    """y = x̂·w + b with x̂ standardized over `axes` (or with the `fixed` statistics); w, b
    broadcast against x or None (1, 0)."""
    xhat, _, rstd = standardize(x, axes, eps, centered, fixed)
    if dy is None:
        return xhat * (1 if w is None else w) + (0 if b is None else b)
    g = dy * (1 if w is None else w)
    dx = standardize_grad(g, xhat, rstd, axes, centered, fixed is not None)
    grads = {"weight": None if w is None else _sum_like(dy * xhat, w)}
    grads["bias"] = None if b is None else _sum_like(dy, b)
    return dx, {k: v for k, v in grads.items() if v is not None}


def _like(out, x, dy):
    """y, or dx with the gradients, in x's shape."""
    return out.reshape(x.shape) if dy is None else (out[0].reshape(x.shape), out[1])


def _per_channel(layer, x, dy, axes, eps, centered=True):
    w, b, fixed = _get(layer, "weight"), _get(layer, "bias"), _running(layer, eps)
    return _like(_affine_norm(_rows(x), _rows(dy), w, b, axes, eps, centered, fixed), x, dy)


def batch_norm(layer, x, dy=None):
    """BatchNorm1d/2d: per channel over N and the spatial dims (eval: the running estimates)."""
    return _per_channel(layer, x, dy, (0, 2), layer.eps)


def instance_norm(layer, x, dy=None):
    """InstanceNorm: per sample and channel over the spatial dims (eval with tracked running
    estimates: those)."""
    return _per_channel(layer, x, dy, (2,), layer.eps)


def group_norm(layer, x, dy=None):
    """GroupNorm: per sample over each group of C/G channels and the spatial dims."""
    G = layer.num_groups

    def grouped(a):
        return None if a is None else a.reshape(x.shape[0], G, x.shape[1] // G, -1)

    w, b = (_get(layer, name, (1, G, -1, 1)) for name in ("weight", "bias"))
    return _like(_affine_norm(grouped(x), grouped(dy), w, b, (2, 3), layer.eps), x, dy)


def _last_dims(layer, x, dy, eps, centered):
    """LayerNorm and RMSNorm: per example over normalized_shape, elementwise affine."""
    S = 1
    for n in layer.normalized_shape:
        S *= n

    def flat(a):
        return None if a is None else a.reshape(-1, S)

    w, b = (_get(layer, name, (1, S)) for name in ("weight", "bias"))
    return _like(_affine_norm(flat(x), flat(dy), w, b, (1,), eps, centered), x, dy)


def layer_norm(layer, x, dy=None):
    """LayerNorm: y = (x - μ)/sqrt(σ² + ε)·γ + β over the last dims."""
    return _last_dims(layer, x, dy, layer.eps, centered=True)


def rms_norm(layer, x, dy=None):
    """RMSNorm: y = x/sqrt(⟨x²⟩ + ε)·γ over the last dims; eps None: the dtype's epsilon."""
    eps = float(np.finfo(x.dtype).eps) if layer.eps is None else layer.eps
    return _last_dims(layer, x, dy, eps, centered=False)


def filter_response_norm(layer, x, dy=None):
    """FRN + TLU: y = γ·x/sqrt(⟨x²⟩ + |ε|) + β per sample and channel, z = max(y, τ)."""
    xp = get_array_module(x)
    learned = layer.learnable_eps
    eps_value = layer.eps.data.reshape(()) if learned else layer.eps
    eps = abs(eps_value)
    w, b, tau = (_get(layer, name) for name in ("weight", "bias", "tau"))
    x3 = _rows(x)
    xhat, _, rstd = standardize(x3, (2,), eps, centered=False)
    y = xhat * w + b
    if dy is None:
        return xp.maximum(y, tau).reshape(x.shape)
    dz = _rows(dy)
    passes = y > tau  # a tie y = τ sends the gradient to τ, as tinynorm's TLU
    dy3 = dz * passes
    g = dy3 * w
    grads = {
        "weight": _sum_like(dy3 * xhat, w),
        "bias": _sum_like(dy3, b),
        "tau": _sum_like(dz * ~passes, tau),
    }
    if learned:  # dL/dε = Σ -½·ρ³·Σ_s g·x per sample and channel, times d|ε|/dε
        d_eps = (-0.5 * rstd**3 * (g * x3).sum(axis=2, keepdims=True)).sum()
        grads["eps"] = (d_eps * xp.sign(eps_value)).reshape(1)
    dx = standardize_grad(g, xhat, rstd, (2,), centered=False)
    return dx.reshape(x.shape), grads


def batch_renorm(layer, x, dy=None):
    """x̂ = (x - μ_B)/σ_B·r + d, r = clip(σ_B/σ, 1/rmax, rmax), d = clip((μ_B - μ)/σ, ±dmax),
    r and d constant in the backward pass; y = x̂·γ + β per channel."""
    if not layer.training:  # (x - μ)/σ
        return _per_channel(layer, x, dy, (0, 2), layer.eps)
    x3, dy3 = _rows(x), _rows(dy)
    w, b, mu, sigma = (_get(layer, k) for k in ("weight", "bias", "running_mean", "running_std"))
    rmax, dmax = layer.current_limits
    xhat, mean, rstd = standardize(x3, (0, 2), layer.eps)
    r = (1 / (rstd * sigma)).clip(1 / rmax, rmax)
    d = ((mean - mu) / sigma).clip(-dmax, dmax)
    renormed = xhat * r + d
    w1, b0 = (1 if w is None else w), (0 if b is None else b)
    if dy is None:
        return (renormed * w1 + b0).reshape(x.shape)
    dx = standardize_grad(dy3 * (w1 * r), xhat, rstd, (0, 2))
    grads = {} if w is None else {"weight": _sum_like(dy3 * renormed, w), "bias": _sum_like(dy3, b)}
    return dx.reshape(x.shape), grads


def mean_only_batch_norm(layer, x, dy=None):
    """y = x - μ_B + β per channel (eval: the running mean)."""
    x3, dy3, b = _rows(x), _rows(dy), _get(layer, "bias")
    fixed = _running(layer, 0.0)
    mean = x3.mean(axis=(0, 2), keepdims=True) if fixed is None else fixed[0]
    if dy is None:
        return (x3 - mean + (0 if b is None else b)).reshape(x.shape)
    dx = dy3 if fixed is not None else dy3 - dy3.mean(axis=(0, 2), keepdims=True)
    return dx.reshape(x.shape), {} if b is None else {"bias": _sum_like(dy3, b)}


def _mixed_norm(x, dy, w, b, mix, eps: float, mix_grads: bool = False):
    """y = (Σ_k a_k·x̂_k)·γ + β for standardizations k = (axes, a_k, fixed statistics or None)
    of the (N, C, S) x. With `mix_grads`, the gradients also hold "mix": [∂L/∂a_k] for
    per-channel a_k."""
    parts = [(axes, a, fixed, *standardize(x, axes, eps, True, fixed)) for axes, a, fixed in mix]
    mixed = sum(a * xhat for _, a, _, xhat, _, _ in parts)
    w1, b0 = (1 if w is None else w), (0 if b is None else b)
    if dy is None:
        return mixed * w1 + b0
    g = dy * w1
    dx = sum(
        standardize_grad(g * a, xhat, rstd, axes, True, fixed is not None)
        for axes, a, fixed, xhat, _, rstd in parts
    )
    grads = {} if w is None else {"weight": _sum_like(dy * mixed, w), "bias": _sum_like(dy, b)}
    if mix_grads:
        grads["mix"] = [_sum_like(g * xhat, a) for _, a, _, xhat, _, _ in parts]
    return dx, grads


def batch_instance_norm(layer, x, dy=None):
    """y = (ρ·x̂_BN + (1 - ρ)·x̂_IN)·γ + β, ρ per channel."""
    rho, w, b = (_get(layer, k) for k in ("rho", "weight", "bias"))
    mix = [((0, 2), rho, _running(layer, layer.eps)), ((2,), 1 - rho, None)]
    out = _mixed_norm(_rows(x), _rows(dy), w, b, mix, layer.eps, mix_grads=True)
    if dy is None:
        return out.reshape(x.shape)
    dx, grads = out
    d_bn, d_in = grads.pop("mix")
    return dx.reshape(x.shape), {**grads, "rho": d_bn - d_in}


def batch_layer_norm(layer, x, dy=None, delta: float = 1e-4):
    """y = γ·((1/m - δ)·x̂_LN + (1 - 1/m - δ)·x̂_BN)/sqrt(C) + β with m = N in training and
    the last training batch size in eval; x̂_BN in eval from the running estimates unless
    `eval_batch_stats`."""
    N, C = x.shape[:2]
    m = N if layer.training else int(layer.batch_size.data) or N
    a_bn, a_ln = ((1 - 1 / m - delta) / C**0.5, (1 / m - delta) / C**0.5)
    w, b = _get(layer, "weight"), _get(layer, "bias")
    fixed = None if layer.eval_batch_stats else _running(layer, layer.eps)
    mix = [((0, 2), a_bn, fixed), ((1, 2), a_ln, None)]
    return _like(_mixed_norm(_rows(x), _rows(dy), w, b, mix, layer.eps), x, dy)


def _softmax(z):
    e = get_array_module(z).exp(z - z.max())
    return e / e.sum()


def switchable_norm(layer, x, dy=None):
    """μ = Σ_k a_k μ_k, σ² = Σ_k b_k σ²_k over k = (IN, LN, BN), a = softmax(mean_weight),
    b = softmax(var_weight); y = (x - μ)/sqrt(σ² + ε)·γ + β. The LN and BN moments are pooled
    from the IN (per sample and channel) moments; in eval BN's are the running estimates."""
    x3, dy3 = _rows(x), _rows(dy)
    xp = get_array_module(x)
    N, C, S = x3.shape
    w, b = _get(layer, "weight"), _get(layer, "bias")
    w1, b0 = (1 if w is None else w), (0 if b is None else b)
    a, bw = _softmax(layer.mean_weight.data), _softmax(layer.var_weight.data)
    m_in = x3.mean(axis=2, keepdims=True)
    e2_in = (x3 * x3).mean(axis=2, keepdims=True)
    pooled = [(m_in, e2_in, S)]  # (E[x], E[x²], values per statistic) for IN, LN, BN
    for axis, m in ((1, C * S), (0, N * S)):
        pooled.append(
            (m_in.mean(axis=axis, keepdims=True), e2_in.mean(axis=axis, keepdims=True), m)
        )
    if _running(layer, layer.eps) is not None:  # eval: BN's moments are the running estimates
        mu, v = _get(layer, "running_mean"), _get(layer, "running_var")
        pooled[2] = (mu, v + mu * mu, None)
    var = [e2 - m1 * m1 for m1, e2, _ in pooled]
    mean = sum(a[k] * m1 for k, (m1, _, _) in enumerate(pooled))
    rstd = (sum(bw[k] * v for k, v in enumerate(var)) + layer.eps) ** -0.5
    xhat = (x3 - mean) * rstd
    if dy is None:
        return (xhat * w1 + b0).reshape(x.shape)
    g = dy3 * w1
    dmean = -rstd * g.sum(axis=2, keepdims=True)  # ∂L/∂μ per (n, c)
    dvar = -0.5 * rstd * rstd * (g * xhat).sum(axis=2, keepdims=True)  # ∂L/∂σ²
    # each statistic k: ∂L/∂E_k[x] and ∂L/∂E_k[x²], summed over the rows it pools, over m_k
    coef_1, coef_x = 0, 0
    for k, ((m1, _, m), axes) in enumerate(zip(pooled, ((), (1,), (0,)))):
        if m is None:  # fixed statistics: no gradient through them
            continue
        dm = a[k] * dmean.sum(axis=axes, keepdims=True)
        dv = bw[k] * dvar.sum(axis=axes, keepdims=True)
        coef_1 = coef_1 + (dm - 2 * m1 * dv) / m
        coef_x = coef_x + 2 * dv / m
    dx = g * rstd + coef_1 + coef_x * x3
    da = xp.stack([(dmean * m1).sum() for m1, _, _ in pooled])
    db = xp.stack([(dvar * v).sum() for v in var])
    grads = {} if w is None else {"weight": _sum_like(dy3 * xhat, w), "bias": _sum_like(dy3, b)}
    grads["mean_weight"] = a * (da - (a * da).sum())
    grads["var_weight"] = bw * (db - (bw * db).sum())
    return dx.reshape(x.shape), grads
