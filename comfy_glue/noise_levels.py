"""Noise levels (sigmas) as MagicFace compares them: the run's clock.

Everything per step is keyed by sigma, never by call counters, so samplers that call the model
several times per step, skip the uncond branch or batch several images work alike.
"""
SIGMA_RTOL = 1e-5


def same_sigma(a: float, b: float) -> bool:
    return abs(a - b) <= SIGMA_RTOL * max(abs(a), abs(b), 1e-12)


def continues_schedule(last_sigma: float, sigma: float) -> bool:
    """Whether a call at sigma can follow one at last_sigma in one schedule (sigmas never rise)."""
    return sigma <= last_sigma * (1 + SIGMA_RTOL)
