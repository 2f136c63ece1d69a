"""The two formulas every norm shares, written once for the CPU kernels, the GPU path and the ops.

`pool_moments` merges the moments of parts of the data into the moments of their union (Chan
et al.): a GPU row's chunks, a statistic's rows, and later the processes of a SyncBatchNorm.
`dx_terms` is the closed-form backward of a normalization with batch statistics; it is a
`register_jitable` function, so the CPU kernels call it from `@njit` code and Python calls it on
whole arrays (NumPy or CuPy) with the same source.
"""

from __future__ import annotations

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
