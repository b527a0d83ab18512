"""Gunther's Universal Scalability Law, fitted to a sweep's steps with scipy's ``curve_fit``.

    X(N) = lambda * N / (1 + sigma * (N - 1) + kappa * N * (N - 1))

X is throughput (requests/s), N the concurrency: requests in flight on average, which Little's law gives from the
same step's figures as N = X * mean latency. sigma is contention (queueing on a shared resource), kappa coherency
(crosstalk that makes throughput fall past a peak); with kappa > 0 the peak is at N* = sqrt((1 - sigma) / kappa).
See N. J. Gunther, "Guerrilla Capacity Planning" (2007), ch. 4-6, and http://www.perfdynamics.com/Manifesto/USLscalability.html.

The peak is an extrapolation whenever N* lies beyond the concurrencies the sweep measured, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_POINTS = 4  # three parameters: fewer points would fit any curve exactly


@dataclass(frozen=True)
class Fit:
    lam: float  # throughput of one request in flight (requests/s)
    sigma: float
    kappa: float
    lam_err: float  # one standard error of each, from the fit's covariance
    sigma_err: float
    kappa_err: float
    rmse: float  # root mean square of the residuals (requests/s)
    r2: float
    peak_concurrency: float | None  # N*, None when kappa is 0 (no peak: throughput levels off)
    peak_throughput: float  # X(N*), or lam / sigma when there is no peak (the asymptote), inf when sigma is 0 too
    measured_max_concurrency: float

    @property
    def extrapolated(self) -> bool:
        return self.peak_concurrency is None or self.peak_concurrency > self.measured_max_concurrency

    def as_dict(self) -> dict:
        def r(x):
            return None if x is None or not math.isfinite(x) else round(x, 6)

        return {"lambda": r(self.lam), "sigma": r(self.sigma), "kappa": r(self.kappa),
                "lambda_err": r(self.lam_err), "sigma_err": r(self.sigma_err), "kappa_err": r(self.kappa_err),
                "rmse_rps": r(self.rmse), "r2": r(self.r2), "peak_concurrency": r(self.peak_concurrency),
                "peak_throughput_rps": r(self.peak_throughput),
                "measured_max_concurrency": r(self.measured_max_concurrency), "extrapolated": self.extrapolated}


def throughput(n, lam: float, sigma: float, kappa: float):
    return lam * n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))


def fit(concurrency: list[float], rps: list[float]) -> Fit | None:
    """The USL through (N, X) points, or None with fewer than MIN_POINTS usable points or when the fit fails."""
    import numpy as np
    from scipy.optimize import curve_fit

    points = [(n, x) for n, x in zip(concurrency, rps, strict=True) if n > 0 and x > 0]
    if len(points) < MIN_POINTS:
        return None
    n = np.array([p[0] for p in points], dtype=float)
    x = np.array([p[1] for p in points], dtype=float)
    # lambda starts at the best throughput per request in flight seen; sigma and kappa at small positive values.
    start = (float(np.max(x / n)), 0.01, 0.0001)
    try:
        params, cov = curve_fit(throughput, n, x, p0=start, bounds=([0.0, 0.0, 0.0], [np.inf, 1.0, np.inf]),
                                maxfev=20000)
    except (RuntimeError, ValueError):  # no convergence, or a degenerate set of points
        return None
    lam, sigma, kappa = (float(v) for v in params)
    errors = [float(math.sqrt(v)) if math.isfinite(v) and v >= 0 else math.inf for v in np.diag(cov)]
    residuals = x - throughput(n, lam, sigma, kappa)
    rmse = float(math.sqrt(np.mean(residuals ** 2)))
    total = float(np.sum((x - np.mean(x)) ** 2))
    r2 = 1.0 - float(np.sum(residuals ** 2)) / total if total > 0 else 1.0
    # A peak only when coherency is told apart from zero (above one standard error): a straight line fits with a
    # kappa of 1e-10 and a "peak" at 100,000 requests in flight that says nothing.
    if kappa > 1e-9 and kappa > errors[2]:
        peak_n = math.sqrt(max(1.0 - sigma, 0.0) / kappa)
        peak_x = float(throughput(peak_n, lam, sigma, kappa))
    else:
        peak_n, peak_x = None, (lam / sigma if sigma > 0 else math.inf)
    return Fit(lam, sigma, kappa, *errors, rmse=rmse, r2=r2, peak_concurrency=peak_n, peak_throughput=peak_x,
               measured_max_concurrency=float(np.max(n)))
