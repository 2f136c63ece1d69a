"""The formulas every norm shares, written once for the CPU kernels, the GPU kernels and the ops.

`pool_moments` merges the moments of parts of the data into the moments of their union (Chan
et al.): a GPU row's chunks, a statistic's rows, and later the processes of a SyncBatchNorm.
`dx_terms` is the closed-form backward of a normalization with batch statistics.
`finalize_statistic` and `finalize_gradient` are the small steps between a normalization's
reduction and its elementwise pass, for one statistic (and one channel): the CPU's
`statistics`/`coefficients` loop over them, the GPU's run a thread each.
These three are `register_jitable` functions: `@njit` and `@cuda.jit` code call them, and
Python calls `dx_terms` on whole arrays (NumPy or CuPy), all with the same source.
"""

from __future__ import annotations

import math

from numba.extending import register_jitable


def pool_moments(mean, m2, count, axis):
    """Mean and M2 = Σ (x - mean)² of the union of parts whose means are `mean`, M2s `m2` and
    sizes `count` (a number or an array broadcasting against `mean`), pooled along `axis` (an
    int or tuple, kept as size-1 dims), and the pooled size. Exact for any offset:

        n = Σ nᵢ,   mean = Σ nᵢ·meanᵢ / n,   M2 = Σ M2ᵢ + Σ nᵢ·(meanᵢ - mean)²

    (no E[x²] - E[x]² cancellation). Works on NumPy and CuPy arrays alike."""
    n = (count + 0 * mean).sum(axis=axis, keepdims=True)
    pooled = (count * mean).sum(axis=axis, keepdims=True) / n
    return pooled, (m2 + count * (mean - pooled) ** 2).sum(axis=axis, keepdims=True), n


@register_jitable
def dx_terms(rho, mean_g, mean_gx, centered, scaled):
    """The closed-form gradient of x̂ = (x - c)·ρ through its batch statistics (c = μ when
    `centered`, else 0; ρ = 1/sqrt(σ² + ε) when `scaled`, else 1). With g = dL/dx̂ (γ·dy and
    the like) and ⟨·⟩ the mean over one statistic's m values, mean_g = ⟨g⟩ and mean_gx =
    ⟨g·(x - c)⟩:

        dx = ρ·(g - ⟨g⟩ - x̂·⟨g·x̂⟩) = ρ·g + beta·(x - c) + delta,
        beta = -ρ³·⟨g·(x - c)⟩ (0 unless scaled),   delta = -ρ·⟨g⟩ (0 unless centered).

    BN, GN, LN and IN are centered and scaled; mean-only BN is not scaled (dx = g - ⟨g⟩);
    RMSNorm and FRN are not centered (dx = ρ·(g - x̂·⟨g·x̂⟩)). Returns (beta, delta) in the
    inputs' precision; call with float64 values (beta ~ ρ³ underflows float32 for large σ).
    The flags multiply instead of branching: no branch in a kernel's loop over statistics."""
    return -rho * rho * rho * mean_gx * scaled, -rho * mean_g * centered


@register_jitable
def pool_rows(mean_p, m2_p, chunk, S, C, n0, n1, c0, c1):
    """(count, mean, M2) of rows n·C + c, n0 ≤ n < n1, c0 ≤ c < c1, from their chunks' moments
    mean_p, m2_p (N·C, J) (J chunks of `chunk` values, the last S - (J-1)·chunk), pooled one
    chunk at a time by Chan's update (`pool_moments`)."""
    J = mean_p.shape[1]
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for n in range(n0, n1):
        for r in range(n * C + c0, n * C + c1):
            for j in range(J):
                size = chunk if j < J - 1 else S - (J - 1) * chunk
                total = count + size
                d = mean_p[r, j] - mean
                mean += d * size / total
                m2 += m2_p[r, j] + d * d * count * size / total
                count = total
    return count, mean, m2


@register_jitable
def _ramp(step, start, end):
    """0 before `start`, 1 from `end` on, linear in between (a step at `start` if end ≤ start)."""
    if end <= start:
        return 0.0 if step < start else 1.0
    return min(max((step - start) / (end - start), 0.0), 1.0)


@register_jitable
def renorm_limits(step, warmup, r_steps, d_steps, rmax, dmax):
    """Batch renorm's limits (rmax, dmax) after `step` training steps (Ioffe 2017's schedule):
    (1, 0), plain batch norm, until `warmup`, then linearly to `rmax` at `r_steps` and to
    `dmax` at `d_steps`; with all three 0, (rmax, dmax) from the start."""
    return 1 + (rmax - 1) * _ramp(step, warmup, r_steps), dmax * _ramp(step, warmup, d_steps)


@register_jitable
def finalize_statistic(
    lo, hi, mean_p, m2_p, chunk, S, C, k, across, centered, scaled, eps, gamma, beta, has_gamma,
    has_beta, run_mean, run_var, momentum, has_run_mean, has_run_var, renorm, step, warmup,
    r_steps, d_steps, rmax, dmax, corrections, stat_mean, stat_rstd, center, scale, shift,
):  # fmt: skip
    """The small step between a normalization's reduction and its elementwise pass, for each
    statistic lo ≤ i < hi, i = p·G + g (G = C/k runs of k channels; p the sample, or 0 when
    `across` the batch): pool its rows' per-chunk moments, then its center c and ρ, the running
    estimates of its channels, and its rows' coefficients. One body for the CPU (all i in one
    call) and the GPU (a thread per i); flat arguments, as a CUDA kernel takes them (on the CPU a
    tuple argument costs microseconds to dispatch, and a call per i each array's reference
    counts).

    mean_p, m2_p (N·C, J): the moments of each row's J chunks of `chunk` values (the last
    S - (J-1)·chunk), pooled by Chan's update. c = μ when `centered` (else 0, σ² = ⟨x²⟩),
    ρ = 1/sqrt(σ² + eps) when `scaled` (else 1). γ, β (C,) where has_γ, has_β; run_mean,
    run_var (C,) where has_run_mean, has_run_var: each buffer moves by `momentum` towards c and
    the unbiased m/(m-1)·σ² (m values a statistic). Writes stat_mean, stat_rstd = c, ρ
    (1 or N, G) in float64 and center, scale, shift (N·C,): c, ρ·γ[c], β[c].

    `renorm` (batch renorm, k = 1 across the batch): run_var holds the moving σ, and before the
    buffers move, r = clip(σ_B/σ, 1/rmax, rmax) and d = clip((c - μ)/σ, -dmax, dmax) with
    σ_B = 1/ρ and the limits `renorm_limits`(step[0], ...) make the coefficients ρ·r·γ[c] and
    d·γ[c] + β[c]; corrections (2, C) receives r, d; σ moves towards σ_B."""
    N = mean_p.shape[0] // C
    G = C // k
    for i in range(lo, hi):
        p, g = i // G, i % G
        n0, n1 = (0, N) if across else (p, p + 1)
        count, mean, m2 = pool_rows(mean_p, m2_p, chunk, S, C, n0, n1, g * k, g * k + k)
        var = m2 / count
        if not centered:
            var += mean * mean
            mean = 0.0
        rho = 1.0 / math.sqrt(var + eps) if scaled else 1.0
        stat_mean[p, g] = mean
        stat_rstd[p, g] = rho
        for c in range(g * k, g * k + k):
            a = rho * gamma[c] if has_gamma else rho
            b = beta[c] if has_beta else 0.0
            if renorm:
                r_limit, d_limit = renorm_limits(step[0], warmup, r_steps, d_steps, rmax, dmax)
                r = min(max(1.0 / (rho * run_var[c]), 1.0 / r_limit), r_limit)
                d = min(max((mean - run_mean[c]) / run_var[c], -d_limit), d_limit)
                corrections[0, c] = r
                corrections[1, c] = d
                b += d * gamma[c] if has_gamma else d
                a *= r
            if has_run_mean:
                run_mean[c] = (1 - momentum) * run_mean[c] + momentum * mean
            if has_run_var:
                target = 1.0 / rho if renorm else var * count / (count - 1)
                run_var[c] = (1 - momentum) * run_var[c] + momentum * target
            for n in range(n0, n1):
                center[n * C + c] = mean
                scale[n * C + c] = a
                shift[n * C + c] = b


@register_jitable
def finalize_gradient(
    lo, hi, g_p, gx_p, C, k, across, centered, scaled, rstd, m, gamma, has_gamma, renorm,
    corrections, alpha, beta, delta, sum_gx, dgamma, dbeta,
):  # fmt: skip
    """The backward's step between its reduction and its elementwise pass (see
    `finalize_statistic`), for each lo ≤ i < hi, statistic i and channel i (either may be out of
    range):

    statistic i: with g = γ[c]·Σ_s dy·w and gx = γ[c]·Σ_s dy·w·(x - c) per row, summed over the
    chunks of g_p = Σ dy·w and gx_p = Σ dy·w·(x - c) (N·C, J) and over the statistic's rows
    (m values, ρ = rstd (1 or N, G)), writes sum_gx (1 or N, G) and the rows' coefficients of
    dx = alpha·dy·w + beta·(x - c) + delta, (N·C,) float64: alpha = ρ·γ[c] and
    `dx_terms`(ρ, ⟨g⟩, ⟨gx⟩);
    channel i: dγ = Σ_n ρ·Σ_s dy·(x - c), dβ = Σ_n Σ_s dy (stored in their arrays' dtype).
    With `renorm`, x̃ = r·x̂ + d (corrections (2, C): r, d, constants): g is r[c] times the
    above, alpha = ρ·r[c]·γ[c] and dγ = Σ_n (r·ρ·Σ_s dy·(x - c) + d·Σ_s dy)."""
    N, J = g_p.shape[0] // C, g_p.shape[1]
    G = C // k
    for i in range(lo, hi):
        if i < rstd.shape[0] * G:
            p, g = i // G, i % G
            n0, n1 = (0, N) if across else (p, p + 1)
            sg = 0.0
            sgx = 0.0
            for n in range(n0, n1):
                for c in range(g * k, g * k + k):
                    w = gamma[c] if has_gamma else 1.0
                    if renorm:
                        w *= corrections[0, c]
                    for j in range(J):
                        sg += w * g_p[n * C + c, j]
                        sgx += w * gx_p[n * C + c, j]
            rho = rstd[p, g]
            b, d = dx_terms(rho, sg / m, sgx / m, centered, scaled)
            sum_gx[p, g] = sgx
            for n in range(n0, n1):
                for c in range(g * k, g * k + k):
                    a = rho * gamma[c] if has_gamma else rho
                    alpha[n * C + c] = a * corrections[0, c] if renorm else a
                    beta[n * C + c] = b
                    delta[n * C + c] = d
        if i < C:
            dg = 0.0
            db = 0.0
            for n in range(N):
                rho = rstd[0 if across else n, i // k]
                for j in range(J):
                    dg += rho * gx_p[n * C + i, j]
                    db += g_p[n * C + i, j]
            dgamma[i] = dg * corrections[0, i] + db * corrections[1, i] if renorm else dg
            dbeta[i] = db
