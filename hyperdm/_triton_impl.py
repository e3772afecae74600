"""The Triton kernels themselves (see :mod:`hyperdm.triton_kernels` for what they compute and their launchers).

Imported only when triton is: ``@triton.jit`` reads ``TRITON_INTERPRET`` here, at import. Triton reads
the parameters' annotations (compile-time constants; float64 scalars), so the others stay unannotated.
"""

# mypy: ignore-errors
# (triton ships no type information for its kernel language)

import triton
import triton.language as tl


# Triton reads the kernels' annotations: constexpr marks compile-time constants, and float parameters are
# annotated float64 (a Python float is passed as float32 otherwise: 1e-300 would be 0, 1/sqrt(k) rounded)
@triton.jit
def real_pass(
    v_ptr,
    part_ptr,
    norms_ptr,
    N,
    NM,
    D,
    rows_per,
    splits,
    inv_sk: tl.float64,
    tmax: tl.float64,
    tiny: tl.float64,
    BLOCK_D: tl.constexpr,
    F64: tl.constexpr,
    STATS: tl.constexpr,
):
    c = tl.program_id(0)
    s = tl.program_id(1)
    acc_t = tl.float64 if F64 else tl.float32
    offs = tl.arange(0, BLOCK_D)
    dmask = offs < D
    base = v_ptr + c.to(tl.int64) * N * D
    p = tl.zeros((BLOCK_D,), acc_t)  # the reference direction: the point that set the running top
    ms = tl.zeros((BLOCK_D,), acc_t)
    dev = tl.zeros((BLOCK_D,), acc_t)
    # per-row scalars and their sums in float64 whatever the features' type (as on the PyTorch path): e^{-t-T}
    # reaches e^{-600} with the exact map, below float32's range
    top = tl.full((), float("-inf"), tl.float64)
    sb = tl.zeros((), tl.float64)
    sc = tl.zeros((), tl.float64)
    se = tl.zeros((), tl.float64)
    s2 = tl.zeros((), tl.float64)
    tiny_v = (tl.zeros((), acc_t) + tiny).to(acc_t)  # smallest norm a direction is divided by
    start = s * rows_per
    stop = tl.minimum(start + rows_per, N)
    for i in range(start, stop):
        x = tl.load(base + i * D + offs, mask=dmask, other=0.0).to(acc_t)
        nv = tl.sqrt(tl.sum(x * x, axis=0))
        n = nv.to(tl.float64)
        tl.store(norms_ptr + c.to(tl.int64) * NM + i, n)  # |v| of every point: where it sits (radius statistics)
        tc = tl.minimum(tl.maximum(n * inv_sk, 1e-300), tmax)
        u = x / tl.maximum(nv, tiny_v)
        if tc > top:  # this point raises the top: it becomes the reference, and the spread's sums move to it
            dp = p - u
            s2 += 2.0 * tl.sum(dp * dev, axis=0).to(tl.float64) + sb * tl.sum(dp * dp, axis=0).to(tl.float64)
            dev += sb.to(acc_t) * dp
            p = u
        new_top = tl.maximum(top, tc)
        r = tl.exp(top - new_top)  # rescale what came before
        sb, sc, se, s2 = sb * r, sc * r, se * r, s2 * r
        ra = r.to(acc_t)
        ms, dev = ms * ra, dev * ra
        top = new_top
        b = sinh_scaled(tc, top)
        em = tl.exp(-tc - top)
        d = u - p
        ms += (b / tl.maximum(n, 1e-300 / inv_sk)).to(acc_t) * x
        dev += b.to(acc_t) * d
        s2 += b * tl.sum(d * d, axis=0).to(tl.float64)
        sb += b
        sc += b + em
        se += em
    # one float64 row per program: top, sum b, sum c, sum e^{-t}, sum b |u - p|^2, m_s, sum b (u - p), p ([D] each)
    out = part_ptr + (c * splits + s).to(tl.int64) * (STATS + 3 * D)  # STATS scalars, then three [D] vectors
    tl.store(out + 0, top)
    tl.store(out + 1, sb)
    tl.store(out + 2, sc)
    tl.store(out + 3, se)
    tl.store(out + 4, s2)
    tl.store(out + STATS + offs, ms, mask=dmask)
    tl.store(out + STATS + D + offs, dev, mask=dmask)
    tl.store(out + STATS + 2 * D + offs, p, mask=dmask)


@triton.jit
def sinh_scaled(t, top):
    """``sinh(t) e^{-top}``, ``t >= 0``: its series where ``e^{t} - e^{-t}`` would cancel (both branches are
    evaluated, so each gets an argument in its own range)."""
    s = tl.minimum(t, 0.05)
    s2 = s * s
    series = s * (1.0 + s2 / 6.0 * (1.0 + s2 / 20.0 * (1.0 + s2 / 42.0 * (1.0 + s2 / 72.0))))
    return tl.where(t < 0.05, series * tl.exp(-top), (tl.exp(t - top) - tl.exp(-t - top)) * 0.5)


@triton.jit
def asinh(x):
    """``asinh(x)``, ``x >= 0``: its series near 0, where the logarithm's argument rounds to 1; from 1 on as
    ``log(x) + log(1 + sqrt(1 + 1/x^2))``, which does not overflow for any finite ``x``."""
    s = tl.minimum(x, 0.05)
    s2 = s * s
    series = s * (1.0 - s2 * (1.0 / 6.0 - s2 * (3.0 / 40.0 - s2 * (5.0 / 112.0 - s2 * (35.0 / 1152.0)))))
    m = tl.minimum(x, 1.0)
    mid = tl.log(m + tl.sqrt(m * m + 1.0))
    big = tl.maximum(x, 1.0)
    r = 1.0 / big
    far = tl.log(big) + tl.log(1.0 + tl.sqrt(1.0 + r * r))
    return tl.where(x < 0.05, series, tl.where(x < 1.0, mid, far))


@triton.jit
def sinh(x):
    """``sinh(x)`` of any sign."""
    s = sinh_scaled(tl.abs(x), 0.0)
    return tl.where(x < 0, -s, s)


@triton.jit
def point(x, sk, inv_sk, tmax, top):
    """One synthetic row's scalars (float64): |v| (at least 1e-300 sqrt(k)), t (at least 1e-300),
    sinh(t) e^{-T}, cosh(t) e^{-T}, e^{-t-T}."""
    n = tl.sqrt(tl.sum(x * x, axis=0)).to(tl.float64)
    t = tl.minimum(tl.maximum(n * inv_sk, 1e-300), tmax)
    b = sinh_scaled(t, top)
    em = tl.exp(-t - top)
    return tl.maximum(n, 1e-300 * sk), t, b, b + em, em


@triton.jit
def syn_finish(
    part_ptr,
    v_ptr,
    d_ptr,
    cls_ptr,
    vec_ptr,
    norms_ptr,
    N,
    M,
    D,
    splits,
    sk: tl.float64,
    inv_sk: tl.float64,
    tmax: tl.float64,
    multi_r: tl.float64,
    multi_s: tl.float64,
    scale: tl.float64,
    BLOCK_D: tl.constexpr,
    F64: tl.constexpr,
    GRAD: tl.constexpr,
    STATS: tl.constexpr,
    CLS: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    acc_t = tl.float64 if F64 else tl.float32
    offs = tl.arange(0, BLOCK_D)
    dmask = offs < D
    # the real side: the row blocks' partial sums brought to one scale and to the reference of the block
    # with the largest top
    width = STATS + 3 * D
    prow = part_ptr + c * splits * width
    top_r = tl.load(prow)
    best = tl.zeros((), tl.int32)
    for s in range(1, splits):
        ts = tl.load(prow + s * width)
        best = tl.where(ts > top_r, s, best)
        top_r = tl.maximum(top_r, ts)
    p_r = tl.load(prow + best * width + STATS + 2 * D + offs, mask=dmask, other=0.0)
    b_r = tl.zeros((), tl.float64)
    c_r = tl.zeros((), tl.float64)
    e_r = tl.zeros((), tl.float64)
    s2_r = tl.zeros((), tl.float64)
    m_r = tl.zeros((BLOCK_D,), tl.float64)
    dv_r = tl.zeros((BLOCK_D,), tl.float64)
    for s in range(splits):
        base = prow + s * width
        r = tl.exp(tl.load(base) - top_r)
        bs = tl.load(base + 1)
        dv = tl.load(base + STATS + D + offs, mask=dmask, other=0.0)
        dp = tl.load(base + STATS + 2 * D + offs, mask=dmask, other=0.0) - p_r
        b_r += r * bs
        c_r += r * tl.load(base + 2)
        e_r += r * tl.load(base + 3)
        s2_r += r * (tl.load(base + 4) + 2.0 * tl.sum(dp * dv, axis=0) + bs * tl.sum(dp * dp, axis=0))
        m_r += r * tl.load(base + STATS + offs, mask=dmask, other=0.0)
        dv_r += r * (dv + bs * dp)
    # the spread about u~, shifted exactly from the one about the common reference
    spread_r = tl.maximum(s2_r - tl.sum(dv_r * dv_r, axis=0) / tl.maximum(b_r, 1e-300), 0.0) * multi_r
    # the synthetic side: its largest t, then the sums, then the exact spread about (n_i / B) m_s
    vrow = v_ptr + c * M * D
    top_s = tl.zeros((), tl.float64)
    for i in range(M):
        x = tl.load(vrow + i * D + offs, mask=dmask, other=0.0).to(acc_t)
        n, t, _, _, _ = point(x, sk, inv_sk, tmax, 0.0)
        tl.store(norms_ptr + c * (N + M) + N + i, n)
        top_s = tl.maximum(top_s, t)
    b_s = tl.zeros((), tl.float64)
    c_s = tl.zeros((), tl.float64)
    e_s = tl.zeros((), tl.float64)
    m_s = tl.zeros((BLOCK_D,), acc_t)
    for i in range(M):
        x = tl.load(vrow + i * D + offs, mask=dmask, other=0.0).to(acc_t)
        n, t, b, cc, em = point(x, sk, inv_sk, tmax, top_s)
        m_s += (b / n).to(acc_t) * x
        b_s += b
        c_s += cc
        e_s += em
    sp_s = tl.zeros((), tl.float64)
    for i in range(M):
        x = tl.load(vrow + i * D + offs, mask=dmask, other=0.0).to(acc_t)
        n, t, b, cc, em = point(x, sk, inv_sk, tmax, top_s)
        dv = x - (n / b_s).to(acc_t) * m_s
        dn = tl.sqrt(tl.sum(dv * dv, axis=0)).to(tl.float64) / n
        sp_s += b * dn * dn
    sp_s = sp_s * multi_s
    # the Law centroids' space parts y = sqrt(k) m_s / sqrt(Q) and the chord form of the distance
    ap_r = b_r + c_r
    ap_s = b_s + c_s
    q_r = e_r * ap_r + b_r * spread_r
    q_s = e_s * ap_s + b_s * sp_s
    kap_r = sk / tl.sqrt(q_r)
    kap_s = sk / tl.sqrt(q_s)
    ms64 = m_s.to(tl.float64)
    y_r = m_r * kap_r
    y_s = ms64 * kap_s
    ny_r = tl.sqrt(tl.sum(y_r * y_r, axis=0))
    ny_s = tl.sqrt(tl.sum(y_s * y_s, axis=0))
    a_r = ny_r / sk
    a_s = ny_s / sk
    df = y_r / tl.maximum(ny_r, 1e-300) - y_s / tl.maximum(ny_s, 1e-300)
    delta = asinh(a_r) - asinh(a_s)
    sh = sinh(delta * 0.5)
    qd = sh * sh + 0.25 * a_r * a_s * tl.sum(df * df, axis=0)
    tl.store(d_ptr + c, 2.0 * scale * sk * asinh(tl.sqrt(qd)))
    if GRAD:  # dd/dy_s (0 where the centroids coincide), then H = kappa Gamma + 2 lambda m_s
        f = -0.5 * scale / tl.sqrt(tl.maximum(qd + qd * qd, 1e-300))
        radial = f * sinh(delta) / tl.sqrt(1.0 + a_s * a_s)
        gam = (radial / tl.maximum(ny_s, 1e-300)) * y_s + (f * a_r) * df
        lam2 = tl.sum(gam * y_s, axis=0) / q_s
        h = kap_s * gam + (lam2 * multi_s) * ms64
        vec = vec_ptr + c * 3 * D
        tl.store(vec + offs, gam.to(acc_t), mask=dmask)
        tl.store(vec + D + offs, h.to(acc_t), mask=dmask)
        tl.store(vec + 2 * D + offs, m_s, mask=dmask)
        out = cls_ptr + c * CLS  # CLS per-class scalars for the gradient's rows
        tl.store(out + 0, kap_s / sk)
        tl.store(out + 1, lam2 * 0.5 / sk)
        tl.store(out + 2, b_s)
        tl.store(out + 3, ap_s)
        tl.store(out + 4, e_s)
        tl.store(out + 5, sp_s)
        tl.store(out + 6, top_s)


@triton.jit
def syn_rows(
    v_ptr,
    cls_ptr,
    vec_ptr,
    out_ptr,
    M,
    D,
    sk: tl.float64,
    inv_sk: tl.float64,
    tmax: tl.float64,
    multi_s: tl.float64,
    BLOCK_D: tl.constexpr,
    F64: tl.constexpr,
    CLS: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    row = c * M + tl.program_id(1)
    acc_t = tl.float64 if F64 else tl.float32
    offs = tl.arange(0, BLOCK_D)
    dmask = offs < D
    vec = vec_ptr + c * 3 * D
    gam = tl.load(vec + offs, mask=dmask, other=0.0)
    h = tl.load(vec + D + offs, mask=dmask, other=0.0)
    m_s = tl.load(vec + 2 * D + offs, mask=dmask, other=0.0)
    cls = cls_ptr + c * CLS
    ks = tl.load(cls + 0)
    ls = tl.load(cls + 1)
    b_s = tl.load(cls + 2)
    ap_s = tl.load(cls + 3)
    e_s = tl.load(cls + 4)
    sp_s = tl.load(cls + 5)
    top_s = tl.load(cls + 6)
    x = tl.load(v_ptr + row * D + offs, mask=dmask, other=0.0).to(acc_t)
    n, t, b, cc, em = point(x, sk, inv_sk, tmax, top_s)
    dv = x - (n / b_s).to(acc_t) * m_s
    dn = tl.sqrt(tl.sum(dv * dv, axis=0)).to(tl.float64) / n
    dq = (sp_s + b_s * dn * dn * multi_s) * cc + e_s * (b + cc) - ap_s * em  # dQ/dt of this point
    pg = tl.sum(x * gam, axis=0).to(tl.float64)
    ph = tl.sum(x * h, axis=0).to(tl.float64)
    radial = tl.where(t < tmax, ks * cc * pg / n - ls * dq, 0.0)  # a clamped point moves only its direction
    gamma = b / n
    coef = (radial - gamma * ph / n) / n
    g = coef.to(acc_t) * x + gamma.to(acc_t) * h
    tl.store(out_ptr + row * D + offs, g.to(out_ptr.dtype.element_ty), mask=dmask)
