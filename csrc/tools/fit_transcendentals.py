"""Fit the polynomial coefficients of log_positive and sincos_small in csrc/philox.h.

Each polynomial is a weighted minimax fit (Lawson's iteratively reweighted least squares on
Chebyshev nodes) of the part of the function that the leading terms leave, with the weight
chosen so that the error is relative to the function itself. Prints the float32 coefficients,
highest degree first (Horner order), and the fits' relative errors before and after rounding.
csrc/tools/check_transcendentals.cpp then measures the ulp error of the float32 code.

    python csrc/tools/fit_transcendentals.py     # needs numpy and mpmath
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 40
NODES = 6000


def chebyshev_nodes(lo: float, hi: float) -> np.ndarray:
    return np.cos(np.linspace(np.pi, 0, NODES)) * (hi - lo) / 2 + (hi + lo) / 2


def lawson(t, target, scale, deg, iters=300):
    """Coefficients c minimising max |scale * (sum_k c_k t^k - target)| over the nodes t."""
    basis = np.stack([t**k for k in range(deg + 1)], 1) * scale[:, None]
    rhs = target * scale
    w = np.full(len(t), 1.0 / len(t))
    for _ in range(iters):
        sw = np.sqrt(w)
        c, *_ = np.linalg.lstsq(basis * sw[:, None], rhs * sw, rcond=None)
        err = np.abs(basis @ c - rhs)
        w = w * err / (w * err).sum()
    c32 = c.astype(np.float32)
    return c32, np.abs(basis @ c - rhs).max(), np.abs(basis @ c32.astype(np.float64) - rhs).max()


def report(name, fit):
    c32, err, err32 = fit
    print(f"{name}: relative error {err:.2e}, {err32:.2e} with float32 coefficients")
    for c in c32[::-1]:
        print(f"  {str(c)}f")  # the shortest decimal that rounds back to c


def main():
    # log(1 + f) = f - f^2/2 + f^3 P(f), f in [sqrt(1/2) - 1, sqrt(2) - 1]
    f = chebyshev_nodes(float(mp.sqrt(0.5) - 1), float(mp.sqrt(2) - 1))
    f = f[np.abs(f) > 1e-9]
    mf = [mp.mpf(v) for v in f]
    target = np.array([float((mp.log1p(v) - v + v * v / 2) / v**3) for v in mf])
    log1p = np.array([float(mp.log1p(v)) for v in mf])
    report("log P (degree 7)", lawson(f, target, f**3 / np.abs(log1p), 7))

    # sin r = r + r^3 S(r^2), cos r = 1 - r^2/2 + r^4 C(r^2), |r| <= pi/4 (+ rounding slack)
    r = chebyshev_nodes(0.0, np.pi / 4 + 0.002)
    r = r[r > 1e-6]
    mr = [mp.mpf(v) for v in r]
    z = r * r
    target_s = np.array([float((mp.sin(v) - v) / v**3) for v in mr])
    target_c = np.array([float((mp.cos(v) - 1 + v * v / 2) / v**4) for v in mr])
    report("sin S (degree 3)", lawson(z, target_s, r**3 / np.sin(r), 3))
    report("cos C (degree 2)", lawson(z, target_c, z**2 / np.cos(r), 2))


if __name__ == "__main__":
    main()
