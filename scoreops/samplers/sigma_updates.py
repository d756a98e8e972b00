"""The per-step coefficients of the sigma-space samplers, tabulated once in float64 on the host.

Every update is ``x' = a*x + sum_k b_k*term_k + e*z`` (:func:`scoreops.ops.sigma_step`); each
function below returns the table of one sampler, one row ``(a, b_0, ..., b_{K-1}, e)`` per step,
with the maths of docs/design.md ("Few-step samplers"). Notation for step i: sigma = sigmas[i],
sigma' = sigmas[i + 1], rho = sigma'/sigma, h = ln(sigma/sigma') (the step in lambda = -ln sigma),
D_i the denoiser's output at step i. A step to sigma' = 0 is the final denoise ``x' = D_i`` in every
sampler; the loops take it without a table row, and its row here is (0, 1, 0, ..., 0).
"""
from __future__ import annotations

import math

import torch

F64 = torch.float64


def _denoise_row(k: int) -> list[float]:
    """The row of the step to sigma' = 0: x' = D_i (term 0), no noise."""
    return [0.0, 1.0] + [0.0] * k


def _table(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def orders(sigmas: torch.Tensor, max_order: int, lower_order_final: bool, final_below: int | None,
           count_denoise: bool) -> list[int]:
    """The multistep order of each step: warm-up ``min(max_order, j + 1)``, and with
    ``lower_order_final`` at most ``M - j`` at step j of the last steps.

    M counts every step (``count_denoise``, UniPC's rule) or only the steps that end above
    sigma = 0 (the official DPM-Solver's, which has no step to 0). ``final_below``: lower the final
    orders only with fewer steps than this (DPM-Solver: 10); None lowers them at any number.
    """
    n = len(sigmas) - 1
    m = n if count_denoise else n - int(sigmas[-1] == 0)
    lower = lower_order_final and (final_below is None or n < final_below)
    return [min(max_order, j + 1, max(1, m - j) if lower else max_order) for j in range(n)]


def euler(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """Euler's step of the probability-flow ODE dx/dsigma = (x - D)/sigma from each sigma to its
    sigma_next: ``a = rho, b = 1 - rho``. Terms: D_i."""
    rows = []
    for s, s_next in zip(sigma.tolist(), sigma_next.tolist()):
        rho = s_next / s
        rows.append(_denoise_row(1) if s_next == 0 else [rho, 1.0 - rho, 0.0])
    return _table(rows)


def euler_ancestral(sigmas: torch.Tensor, eta: float, s_noise: float) -> torch.Tensor:
    """Euler to sigma_down, then noise of std sigma_up:
    ``sigma_up = min(sigma', eta sigma' sqrt(1 - rho**2))``, ``sigma_down = sqrt(sigma'**2 - sigma_up**2)``,
    ``a = sigma_down/sigma, b = 1 - a, e = s_noise sigma_up``."""
    rows = []
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        if s_next == 0:
            rows.append(_denoise_row(1))
            continue
        up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        a = math.sqrt(s_next**2 - up**2) / s
        rows.append([a, 1.0 - a, s_noise * up])
    return _table(rows)


def churn(sigmas: torch.Tensor, s_churn: float, s_tmin: float, s_tmax: float,
          s_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EDM's churn: ``sigma_hat = sigma (1 + gamma)`` with ``gamma = min(s_churn/N, sqrt(2) - 1)`` where
    ``s_tmin <= sigma <= s_tmax`` (else 0), and the std ``s_noise sqrt(sigma_hat**2 - sigma**2)`` of
    the noise that lifts x to sigma_hat. Returns (sigma_hat, noise std), float64 (N,) each."""
    n = len(sigmas) - 1
    s = sigmas[:-1]
    gamma = torch.where((s >= s_tmin) & (s <= s_tmax), min(s_churn / n, math.sqrt(2.0) - 1.0), 0.0).to(F64)
    s_hat = s * (1.0 + gamma)
    return s_hat, s_noise * (s_hat**2 - s**2).sqrt()


def heun(sigma_hat: torch.Tensor, sigma_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heun's two stages from (x_hat, sigma_hat) to sigma' (EDM Alg. 2), rho = sigma'/sigma_hat:
    ``x~ = rho x_hat + (1 - rho) D_i`` and
    ``x' = rho x_hat + (1 - rho) [(1 - 1/(2 rho)) D_i + D~/(2 rho)]``, D~ = D(x~, sigma').
    Returns the tables of stage 1 (terms D_i) and stage 2 (terms D_i, D~)."""
    first, second = [], []
    for s, s_next in zip(sigma_hat.tolist(), sigma_next.tolist()):
        if s_next == 0:
            first.append(_denoise_row(1))
            second.append(_denoise_row(2))
            continue
        rho = s_next / s
        first.append([rho, 1.0 - rho, 0.0])
        second.append([rho, (1.0 - rho) * (1.0 - 0.5 / rho), (1.0 - rho) * 0.5 / rho, 0.0])
    return _table(first), _table(second)


def _lambda_steps(sigmas: torch.Tensor) -> list[float]:
    """h_i = ln(sigma_i / sigma_{i+1}), inf for a step to 0."""
    return [math.log(s / s_next) if s_next > 0 else math.inf
            for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist())]


def dpmpp_2m_sde(sigmas: torch.Tensor, eta: float, solver_type: str, s_noise: float,
                 step_orders: list[int]) -> torch.Tensor:
    """DPM-Solver++(2M) SDE; eta = 0 with ``"midpoint"`` is DPM-Solver++(2M). Terms D_i, D_{i-1}.

    ``h^ = (1 + eta) h``, ``A = exp(-h^)``: ``a = A, b = 1 - A + k, c = -k, e = s_noise sigma'
    sqrt(1 - exp(-2 eta h))``, with r = h_{i-1}/h and k = (1 - A)/(2r) (midpoint) or
    (1 - (1 - A)/h^)/r (heun); k = 0 at order 1.
    """
    hs, rows = _lambda_steps(sigmas), []
    for i, (h, s_next) in enumerate(zip(hs, sigmas[1:].tolist())):
        if s_next == 0:
            rows.append(_denoise_row(2))
            continue
        h_eta = (1.0 + eta) * h
        one_minus_a = -math.expm1(-h_eta)
        k = 0.0
        if step_orders[i] >= 2:
            r = hs[i - 1] / h
            k = one_minus_a / (2.0 * r) if solver_type == "midpoint" else (1.0 - one_minus_a / h_eta) / r
        e = s_noise * s_next * math.sqrt(-math.expm1(-2.0 * eta * h))
        rows.append([1.0 - one_minus_a, one_minus_a + k, -k, e])
    return _table(rows)


def dpmpp_3m_sde(sigmas: torch.Tensor, eta: float, s_noise: float, step_orders: list[int]) -> torch.Tensor:
    """DPM-Solver++(3M) SDE; eta = 0 is DPM-Solver++(3M). Terms D_i, D_{i-1}, D_{i-2}.

    With h^, A and e as in :func:`dpmpp_2m_sde`, ``phi2 = 1 - (1 - A)/h^``, ``phi3 = phi2/h^ - 1/2``,
    r0 = h_{i-1}/h, r1 = h_{i-2}/h: ``x' = A x + (1 - A) D_i + phi2 d1 - phi3 d2`` with the divided
    differences ``d1_0 = (D_i - D_{i-1})/r0``, ``d1_1 = (D_{i-1} - D_{i-2})/r1``,
    ``d1 = d1_0 + (d1_0 - d1_1) r0/(r0 + r1)``, ``d2 = (d1_0 - d1_1)/(r0 + r1)``; order 2 keeps
    ``phi2 (D_i - D_{i-1})/r0``, order 1 neither.
    """
    hs, rows = _lambda_steps(sigmas), []
    for i, (h, s_next) in enumerate(zip(hs, sigmas[1:].tolist())):
        if s_next == 0:
            rows.append(_denoise_row(3))
            continue
        h_eta = (1.0 + eta) * h
        one_minus_a = -math.expm1(-h_eta)
        phi2 = 1.0 - one_minus_a / h_eta
        b, c, d = one_minus_a, 0.0, 0.0
        if step_orders[i] == 2:
            r0 = hs[i - 1] / h
            b, c = b + phi2 / r0, -phi2 / r0
        elif step_orders[i] == 3:
            r0, r1 = hs[i - 1] / h, hs[i - 2] / h
            phi3 = phi2 / h_eta - 0.5
            # x += phi2 d1 - phi3 d2, expanded over D_i, D_{i-1}, D_{i-2}.
            d0_coef = (phi2 * (2.0 * r0 + r1) - phi3) / (r0 * (r0 + r1))
            d = (phi2 * r0 - phi3) / (r1 * (r0 + r1))
            b, c = b + d0_coef, -d0_coef - d
        e = s_noise * s_next * math.sqrt(-math.expm1(-2.0 * eta * h))
        rows.append([1.0 - one_minus_a, b, c, d, e])
    return _table(rows)


#: iPNDM's Adams-Bashforth weights for uniform steps, kept on any grid (zju-pi's fixed weights).
IPNDM_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ipndm(sigmas: torch.Tensor) -> torch.Tensor:
    """iPNDM: ``x' = x + (sigma' - sigma) sum_{k<p} w_k d_{i-k}``, ``d_j = (x_j - D_j)/sigma_j``,
    p = min(4, i + 1). The fused op reads earlier states instead of a ring of d's, so the terms are
    ``D_i, x_{i-1}, D_{i-1}, x_{i-2}, D_{i-2}, x_{i-3}, D_{i-3}`` (unused ones with coefficient 0).
    """
    rows, sig = [], sigmas.tolist()
    for i in range(len(sig) - 1):
        if sig[i + 1] == 0:
            rows.append(_denoise_row(7))
            continue
        w = IPNDM_WEIGHTS[min(4, i + 1) - 1]
        dsig = sig[i + 1] - sig[i]
        row = [1.0 + w[0] * dsig / sig[i], -w[0] * dsig / sig[i]] + [0.0] * 6 + [0.0]
        for k in range(1, len(w)):
            c = w[k] * dsig / sig[i - k]
            row[2 * k], row[2 * k + 1] = c, -c
        rows.append(row)
    return _table(rows)


UNIPC_VARIANTS = ("bh1", "bh2")


def unipc(sigmas: torch.Tensor, step_orders: list[int], variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """UniPC with data prediction: the predictor UniP-p and the corrector UniC-p of each step.

    With r_k = (lambda_{i-k} - lambda_i)/h < 0, B = rho - 1 (bh2) or -h (bh1),
    g_0 = rho - 1, g_k = -g_{k-1}/h - 1/k!, beta_k = k! g_k / B:
    ``x' = rho x + (1 - rho) D_i - B [sum_{1<=k<p} w_k (D_{i-k} - D_i)/r_k + w_n (D_{i+1} - D_i)]``.
    UniP (w_n = 0): p = 2 takes w_1 = 1/2; p = 3 solves sum_k w_k r_k**j = beta_{j+1}, j < 2.
    UniC: p = 1 takes w_n = 1/2; else solves sum_k w_k r_k**j + w_n = beta_{j+1}, j < p.

    Returns the predictor table (terms D_i, D_{i-1}, D_{i-2}) and the corrector table of the same
    step (base x_i; terms D_{i+1}, D_i, D_{i-1}, D_{i-2}), which turns x_i into x_{i+1} once
    D_{i+1} = D(x~_{i+1}) is known.
    """
    hs, pred, corr = _lambda_steps(sigmas), [], []
    for i, (h, s_next) in enumerate(zip(hs, sigmas[1:].tolist())):
        p = step_orders[i]
        if s_next == 0:
            pred.append(_denoise_row(3))
            corr.append([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
            continue
        rho = math.exp(-h)
        big_b = math.expm1(-h) if variant == "bh2" else -h
        g, fact, beta = math.expm1(-h), 1.0, []
        for k in range(1, p + 1):
            fact *= k
            g = -g / h - 1.0 / fact
            beta.append(fact * g / big_b)
        # r_k for the history D_{i-1}, D_{i-2} (lambda_{i-k} - lambda_i = -(h_{i-1} + ... + h_{i-k})).
        r = [-sum(hs[i - k:i]) / h for k in range(1, p)]
        if p == 1:
            w_pred = []
        elif p == 2:
            w_pred = [0.5]
        else:
            w_pred = torch.linalg.solve(torch.tensor([[rk**j for rk in r] for j in range(p - 1)], dtype=F64),
                                        torch.tensor(beta[:p - 1], dtype=F64)).tolist()
        if p == 1:
            w_corr, w_n = [], 0.5
        else:
            m = torch.tensor([[rk**j for rk in r] + [1.0] for j in range(p)], dtype=F64)
            *w_corr, w_n = torch.linalg.solve(m, torch.tensor(beta, dtype=F64)).tolist()
        pred.append(_unipc_row(rho, big_b, r, w_pred, None))
        corr.append(_unipc_row(rho, big_b, r, w_corr, w_n))
    return _table(pred), _table(corr)


def _unipc_row(rho: float, big_b: float, r: list[float], w: list[float], w_n: float | None) -> list[float]:
    """(a, [D_{i+1},] D_i, D_{i-1}, D_{i-2}, e) of one UniPC update, zero-padded to order 3."""
    hist = [-big_b * wk / rk for wk, rk in zip(w, r)] + [0.0] * (2 - len(w))
    d_i = (1.0 - rho) - sum(hist)
    if w_n is None:
        return [rho, d_i] + hist + [0.0]
    return [rho, -big_b * w_n, d_i + big_b * w_n] + hist + [0.0]
