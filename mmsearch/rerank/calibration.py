"""Turning raw scores into probabilities one can threshold, and measuring how well it worked.

Pure NumPy, no torch: the re-ranker's Platt scaling is fitted at training time and applied
at query time with the same two numbers, and the benchmark scores it with the expected
calibration error defined here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp = np.exp(x[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


@dataclass(frozen=True)
class Platt:
    """``p = sigmoid(scale * logit + bias)``: Platt (1999) scaling of a classifier's logits."""

    scale: float = 1.0
    bias: float = 0.0

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(self.scale * np.asarray(logits, dtype=np.float64) + self.bias)

    def to_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "bias": self.bias}


ANY = "*"  # the key of a scaling that applies to every modality (the single-scaling format)


@dataclass(frozen=True)
class PerModality:
    """One Platt scaling per candidate modality: a matcher's logits for true sound matches
    need not sit where those for true image matches do, so one pooled fit misjudges both."""

    scalings: Mapping[str, Platt] = field(default_factory=dict)

    def __call__(self, logits: np.ndarray, modality: str) -> np.ndarray:
        return self.scaling(modality)(logits)

    def scaling(self, modality: str) -> Platt:
        """The modality's own scaling, else the catch-all one."""
        found = self.scalings.get(modality) or self.scalings.get(ANY)
        if found is None:
            raise KeyError(f"no calibration for {modality!r} candidates (have {sorted(self.scalings)})")
        return found

    @classmethod
    def from_dict(cls, data: Mapping) -> PerModality:
        """``{"image": {"scale", "bias"}, "audio": {...}}``, or one ``{"scale", "bias"}`` for all."""
        if "scale" in data:
            return cls({ANY: Platt(**data)})
        return cls({modality: Platt(**values) for modality, values in data.items()})

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {modality: platt.to_dict() for modality, platt in sorted(self.scalings.items())}


def fit_per_modality(logits: np.ndarray, labels: np.ndarray, modalities: np.ndarray) -> PerModality:
    """:func:`fit_platt` on each modality's pairs apart (``modalities`` names each pair's)."""
    which = np.asarray(modalities).ravel()
    x, y = np.asarray(logits).ravel(), np.asarray(labels).ravel()
    if which.shape != x.shape:
        raise ValueError("one modality per logit")
    return PerModality({str(m): fit_platt(x[which == m], y[which == m]) for m in np.unique(which)})


def fit_platt(logits: np.ndarray, labels: np.ndarray, *, iterations: int = 100, ridge: float = 1e-6) -> Platt:
    """Fit ``scale`` and ``bias`` by Newton's method on the log loss of held-out pairs.

    ``labels`` are 0/1. A tiny ridge keeps the fit finite when the classes separate.
    """
    x = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.shape != y.shape or not len(x):
        raise ValueError("logits and labels must be non-empty and of the same length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    features = np.stack([x, np.ones_like(x)], axis=1)
    weights = np.array([1.0, 0.0])
    loss = _log_loss(features, y, weights, ridge)
    for _ in range(iterations):
        p = sigmoid(features @ weights)
        gradient = features.T @ (p - y) + ridge * weights
        hessian = (features * (p * (1 - p))[:, None]).T @ features + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        for _ in range(40):  # halve the Newton step until the loss goes down (it can overshoot)
            trial = weights - step
            trial_loss = _log_loss(features, y, trial, ridge)
            if trial_loss <= loss:
                break
            step = step / 2
        else:
            break
        weights, loss = trial, trial_loss
        if np.abs(step).max() < 1e-10:
            break
    return Platt(float(weights[0]), float(weights[1]))


def _log_loss(features: np.ndarray, y: np.ndarray, weights: np.ndarray, ridge: float) -> float:
    z = features @ weights
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * ridge * weights @ weights)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the mean |accuracy - confidence| over ``bins`` equal-width probability bins,
    weighted by how many predictions fall in each (Guo et al., 2017, for a binary event)."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if p.shape != y.shape or not len(p):
        raise ValueError("probs and labels must be non-empty and of the same length")
    which = np.minimum((p * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return float(error / len(p))
