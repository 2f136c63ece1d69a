"""Norms that mix instance (IN), layer (LN) and batch (BN) statistics: the bodies the CPU and
CUDA kernels share (`register_jitable`, as in `formulas.py`).

x[n, c, s] as rows r = n·C + c. A row has IN statistics (its S values), a sample LN statistics
(its C·S values, where `has_ln`), a channel BN statistics (its N·S values, where `has_bn`; the
running estimates instead when `bn_fixed`). `stats` (3, N·C + N + C) holds their means,
biased variances and ρ_k = 1/sqrt(σ²_k + eps): row r at r, sample n at N·C + n, channel c at
N·C + N + c. Two mixtures:

    outputs (batch-instance, batch-layer norm)   y = γ·Σ_k w_k·(x - μ_k)·ρ_k + β
    statistics (switchable norm: `switchable`)   μ = Σ_k a_k·μ_k, σ² = Σ_k b_k·σ²_k,
                                                 y = γ·(x - μ)·ρ + β

w = (w_in, w_ln, w_bn) constants, or with a `gate` g (C,), clipped to [0, 1] in place:
w_in = 1 - g[c], w_bn = g[c]; a, b = softmax of the logits λ, λ' (3,) each (IN, LN, BN),
computed once into `mix` (2, 3). The per-row bodies only read these: no square root or
exponential per row but switchable norm's mixed ρ.

The gradients go through the rows' sums A = Σ_s dy and B = Σ_s dy·(x - μ_in) (a reduction
centered on the row's own mean), then per-statistic sums of them (`mixture_sums`, a slot per
sample and per channel), then dx = alpha·dy + beta·(x - μ_in) + delta per row
(`mixture_row_gradients`, with `formulas.dx_terms` per batch statistic). Outputs, with
X_k = B + A·(μ_in - μ_k) = Σ_s dy·(x - μ_k) and g_k = γ·w_k:
    dγ = Σ_n Σ_k w_k·ρ_k·X_k,  dβ = Σ_n A,  dg = Σ_n γ·(ρ_bn·X_bn - ρ_in·X_in),
    statistic k: ⟨g_k·dy⟩ and ⟨g_k·dy·(x - μ_k)⟩ from Σ g_k·A and Σ g_k·X_k;
switchable, with X = B + A·(μ_in - μ), ∂L/∂μ = -ρ·γ·A and ∂L/∂σ² = -½·ρ³·γ·X per row:
    dγ = Σ_n ρ·X,  dβ = Σ_n A,  dL/da_k = Σ_r ∂L/∂μ·μ_k,  dL/db_k = Σ_r ∂L/∂σ²·σ²_k (then
    through the softmax: `logit_grads`), and dx = ρ·γ·dy + Σ_k [a_k/m_k·Σ_k ∂L/∂μ +
    2·b_k/m_k·Σ_k ∂L/∂σ²·(x - μ_k)] over the rows of k's statistic (m_k values).
"""

from __future__ import annotations

import math

from numba.extending import register_jitable

from .formulas import dx_terms, pool_rows


@register_jitable
def _softmax3(logits):
    """softmax of a (3,) array, as three numbers."""
    top = max(logits[0], max(logits[1], logits[2]))
    e0, e1, e2 = (math.exp(logits[0] - top), math.exp(logits[1] - top), math.exp(logits[2] - top))
    total = e0 + e1 + e2
    return e0 / total, e1 / total, e2 / total


@register_jitable
def mixture_statistics(
    lo, hi, step, mean_p, m2_p, chunk, S, N, C, has_ln, has_bn, bn_fixed, run_mean, run_var,
    momentum, has_running, gate, has_gate, size, has_size, eps, switchable, mean_logits,
    var_logits, mix, stats,
):  # fmt: skip
    """Slots lo ≤ i < hi, by `step`, of N·C + N + C: a row's, a sample's or a channel's mean
    and biased σ² into `stats`, pooled from the rows' per-chunk moments mean_p, m2_p (N·C, J)
    (`formulas.pool_rows`). A channel clips its gate (has_gate), and takes the running
    estimates (bn_fixed) or moves them by `momentum` towards μ and the unbiased σ²
    (has_running); slot 0 records the batch size N in size[0] (has_size) and, switchable, the
    weights softmax(λ), softmax(λ') in mix (2, 3). stats[2] holds each ρ = 1/sqrt(σ² + eps);
    a statistic not in the mixture gets 0, 0, 0."""
    NC = N * C
    for i in range(lo, hi, step):
        if i == 0 and has_size:
            size[0] = N
        if i == 0 and switchable:
            mix[0, 0], mix[0, 1], mix[0, 2] = _softmax3(mean_logits)
            mix[1, 0], mix[1, 1], mix[1, 2] = _softmax3(var_logits)
        c = i - NC - N
        stats[0, i] = stats[1, i] = stats[2, i] = 0.0  # a statistic not in the mixture
        if i < NC:
            n0, n1, c0, c1 = i // C, i // C + 1, i % C, i % C + 1
        elif i < NC + N:
            if not has_ln:
                continue
            n0, n1, c0, c1 = i - NC, i - NC + 1, 0, C
        else:
            if has_gate:
                gate[c] = min(max(gate[c], 0.0), 1.0)
            if not has_bn:
                continue
            if bn_fixed:
                stats[0, i] = run_mean[c]
                stats[1, i] = run_var[c]
                stats[2, i] = 1.0 / math.sqrt(run_var[c] + eps)
                continue
            n0, n1, c0, c1 = 0, N, c, c + 1
        count, mean, m2 = pool_rows(mean_p, m2_p, chunk, S, C, n0, n1, c0, c1)
        stats[0, i] = mean
        stats[1, i] = m2 / count
        stats[2, i] = 1.0 / math.sqrt(m2 / count + eps)
        if c >= 0 and has_running:
            run_mean[c] = (1 - momentum) * run_mean[c] + momentum * mean
            run_var[c] = (1 - momentum) * run_var[c] + momentum * m2 / (count - 1)


@register_jitable
def _row(r, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln,
         has_bn):  # fmt: skip
    """Row r's statistics and weights: (μ_in, μ_ln, μ_bn, ρ_in, ρ_ln, ρ_bn, w_in, w_ln, w_bn),
    each ρ_k, w_k 0 for a statistic not in the mixture; switchable: the weights are (ρ, μ, 0)
    for the mixed μ and ρ (mix: the softmax weights a, b)."""
    NC = N * C
    n, c = r // C, r % C
    s_ln = NC + n if has_ln else r  # an absent statistic reads the row's, weighted 0
    s_bn = NC + N + c if has_bn else r
    mu_in, mu_ln, mu_bn = stats[0, r], stats[0, s_ln], stats[0, s_bn]
    rho_in, rho_ln, rho_bn = stats[2, r], stats[2, s_ln], stats[2, s_bn]
    if switchable:
        var = mix[1, 0] * stats[1, r] + mix[1, 1] * stats[1, s_ln] + mix[1, 2] * stats[1, s_bn]
        mu = mix[0, 0] * mu_in + mix[0, 1] * mu_ln + mix[0, 2] * mu_bn
        return mu_in, mu_ln, mu_bn, rho_in, rho_ln, rho_bn, 1.0 / math.sqrt(var + eps), mu, 0.0
    w_ln = w_ln if has_ln else 0.0
    w_bn = w_bn if has_bn else 0.0
    if has_gate:
        g = min(max(gate[c], 0.0), 1.0)
        w_in, w_bn = 1.0 - g, g
    return mu_in, mu_ln, mu_bn, rho_in, rho_ln, rho_bn, w_in, w_ln, w_bn


@register_jitable
def mixture_rows(
    lo, hi, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln, has_bn,
    gamma, has_gamma, beta, has_beta, out,
):  # fmt: skip
    """Rows lo ≤ r < hi: out[:, r - lo] = (center, scale, shift), y = (x - center)·scale +
    shift. (One call over many rows: a call per row would cost each array's reference counts.)"""
    for r in range(lo, hi):
        mu_in, mu_ln, mu_bn, rho_in, rho_ln, rho_bn, w0, w1, w2 = _row(
            r, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln, has_bn
        )
        c = r % C
        g = gamma[c] if has_gamma else 1.0
        b = beta[c] if has_beta else 0.0
        if switchable:  # w0 = ρ, w1 = μ
            out[0, r - lo], out[1, r - lo], out[2, r - lo] = w1, g * w0, b
        else:
            scale = w0 * rho_in + w1 * rho_ln + w2 * rho_bn
            shift = w1 * rho_ln * (mu_in - mu_ln) + w2 * rho_bn * (mu_in - mu_bn)
            out[0, r - lo], out[1, r - lo], out[2, r - lo] = mu_in, g * scale, g * shift + b


@register_jitable
def _row_sums(r, g_p, gx_p):
    """A = Σ_s dy and B = Σ_s dy·(x - μ_in) of row r, from its chunks' sums (N·C, J)."""
    a = 0.0
    b = 0.0
    for j in range(g_p.shape[1]):
        a += g_p[r, j]
        b += gx_p[r, j]
    return a, b


@register_jitable
def mixture_sums(
    lo, hi, step, g_p, gx_p, N, C, stats, eps, switchable, mix, gate,
    has_gate, w_in, w_ln, w_bn, has_ln, has_bn, gamma, has_gamma, sums, dgamma, dbeta, dgate,
):  # fmt: skip
    """Slots lo ≤ i < hi, by `step`, of N + C: sample i's (has_ln) or channel c = i - N's sums
    over its rows into sums (2, N + C): Σ g_k·A and Σ g_k·X_k for its statistic k (outputs),
    or Σ ∂L/∂μ and Σ ∂L/∂σ² (switchable); a channel also writes dγ[c], dβ[c] and dg[c]
    (has_gate). Returns this call's share of the six sums dL/da_k, dL/db_k (switchable: over
    the channels' rows, so every row once)."""
    da0 = da1 = da2 = db0 = db1 = db2 = 0.0
    for i in range(lo, hi, step):
        channel = i >= N
        if not channel and not has_ln:
            continue
        s0 = s1 = dg = db = dgt = 0.0
        for j in range(N if channel else C):
            r = j * C + i - N if channel else i * C + j
            mu_in, mu_ln, mu_bn, rho_in, rho_ln, rho_bn, w0, w1, w2 = _row(
                r, N, C, stats, eps, switchable, mix, gate, has_gate, w_in,
                w_ln, w_bn, has_ln, has_bn,
            )  # fmt: skip
            a, b = _row_sums(r, g_p, gx_p)
            gam = gamma[r % C] if has_gamma else 1.0
            if switchable:  # w0 = ρ, w1 = μ
                x = b + a * (mu_in - w1)
                d_mean = -w0 * gam * a
                d_var = -0.5 * w0 * w0 * w0 * gam * x
                s0 += d_mean
                s1 += d_var
                dg += w0 * x
                if channel:
                    v_ln, v_bn = stats[1, N * C + r // C], stats[1, N * C + i]  # c = i - N
                    da0 += d_mean * mu_in
                    da1 += d_mean * mu_ln
                    da2 += d_mean * mu_bn
                    db0 += d_var * stats[1, r]
                    db1 += d_var * v_ln
                    db2 += d_var * v_bn
            else:
                x_ln, x_bn = b + a * (mu_in - mu_ln), b + a * (mu_in - mu_bn)
                w, mu_k = (w2, mu_bn) if channel else (w1, mu_ln)
                s0 += gam * w * a
                s1 += gam * w * (b + a * (mu_in - mu_k))
                dg += w0 * rho_in * b + w1 * rho_ln * x_ln + w2 * rho_bn * x_bn
                dgt += gam * (rho_bn * x_bn - rho_in * b)
            db += a
        sums[0, i] = s0
        sums[1, i] = s1
        if channel:
            dgamma[i - N] = dg
            dbeta[i - N] = db
            if has_gate:
                dgate[i - N] = dgt
    return da0, da1, da2, db0, db1, db2


@register_jitable
def _softmax_grad(mix, k, d0, d1, d2):
    """dL/dλ through a = softmax(λ) = mix[k] (3,), from dL/da: a_j·(d_j - Σ_i a_i·d_i)."""
    a0, a1, a2 = mix[k, 0], mix[k, 1], mix[k, 2]
    mean = a0 * d0 + a1 * d1 + a2 * d2
    return a0 * (d0 - mean), a1 * (d1 - mean), a2 * (d2 - mean)


@register_jitable
def logit_grads(da0, da1, da2, db0, db1, db2, mix, dlogits):
    """dL/dλ and dL/dλ' into dlogits (2, 3), from dL/da and dL/db (a, b = mix[0], mix[1])."""
    dlogits[0, 0], dlogits[0, 1], dlogits[0, 2] = _softmax_grad(mix, 0, da0, da1, da2)
    dlogits[1, 0], dlogits[1, 1], dlogits[1, 2] = _softmax_grad(mix, 1, db0, db1, db2)


@register_jitable
def mixture_row_gradients(
    lo, hi, g_p, gx_p, N, C, S, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn,
    has_ln, has_bn, bn_fixed, gamma, has_gamma, sums, out,
):  # fmt: skip
    """Rows lo ≤ r < hi: out[:, r - lo] = (alpha, beta, delta), dx = alpha·dy + beta·(x - μ_in)
    + delta, from each row's sums A, B and the per-statistic `sums` of `mixture_sums` (see the
    module docstring)."""
    m_in, m_ln, m_bn = float(S), float(C * S), float(N * S)
    for r in range(lo, hi):
        mu_in, mu_ln, mu_bn, rho_in, rho_ln, rho_bn, w0, w1, w2 = _row(
            r, N, C, stats, eps, switchable, mix, gate, has_gate, w_in, w_ln, w_bn, has_ln, has_bn
        )
        n, c = r // C, r % C
        a, b = _row_sums(r, g_p, gx_p)
        gam = gamma[c] if has_gamma else 1.0
        if switchable:  # w0 = ρ, w1 = μ
            d_mean = -w0 * gam * a
            d_var = -0.5 * w0 * w0 * w0 * gam * (b + a * (mu_in - w1))
            alpha = w0 * gam
            beta = 2 * mix[1, 0] / m_in * d_var
            delta = mix[0, 0] / m_in * d_mean
            if has_ln:
                b_k = 2 * mix[1, 1] / m_ln * sums[1, n]
                beta += b_k
                delta += mix[0, 1] / m_ln * sums[0, n] + b_k * (mu_in - mu_ln)
            if has_bn and not bn_fixed:
                b_k = 2 * mix[1, 2] / m_bn * sums[1, N + c]
                beta += b_k
                delta += mix[0, 2] / m_bn * sums[0, N + c] + b_k * (mu_in - mu_bn)
        else:
            alpha = gam * (w0 * rho_in + w1 * rho_ln + w2 * rho_bn)
            beta, delta = dx_terms(rho_in, gam * w0 * a / m_in, gam * w0 * b / m_in, True, True)
            if has_ln:
                b_k, d_k = dx_terms(rho_ln, sums[0, n] / m_ln, sums[1, n] / m_ln, True, True)
                beta += b_k
                delta += d_k + b_k * (mu_in - mu_ln)
            if has_bn and not bn_fixed:
                mean_g, mean_gx = sums[0, N + c] / m_bn, sums[1, N + c] / m_bn
                b_k, d_k = dx_terms(rho_bn, mean_g, mean_gx, True, True)
                beta += b_k
                delta += d_k + b_k * (mu_in - mu_bn)
        out[0, r - lo], out[1, r - lo], out[2, r - lo] = alpha, beta, delta
