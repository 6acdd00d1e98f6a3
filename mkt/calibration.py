"""Calibrated scores: a monotone map from the vote share to the chance of being right."""

from dataclasses import dataclass

import numpy as np
from sklearn.isotonic import IsotonicRegression

# Ranks names within a flat step of the isotonic map by their raw share, so that one
# threshold can still split them.
RANK_KEEPING_SLOPE = 1e-6


@dataclass(frozen=True)
class ScoreCalibration:
    """Isotonic map from raw vote share to the precision of predictions at that score.

    `shares` and `precisions` are the knots of a piecewise-linear, non-decreasing map,
    fitted on validation names the classifier did not train on.
    """

    shares: list[float]
    precisions: list[float]

    @classmethod
    def fit(cls, shares: np.ndarray, is_correct: np.ndarray) -> "ScoreCalibration":
        """Fit the map on the top share and the correctness of validation names."""
        if len(shares) == 0:
            raise ValueError("need at least one validation name to calibrate, got 0")
        regression = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        regression.fit(np.asarray(shares, dtype=np.float64), is_correct.astype(float))
        return cls(
            [float(x) for x in regression.X_thresholds_],
            [float(y) for y in regression.y_thresholds_],
        )

    def apply(self, shares: np.ndarray) -> np.ndarray:
        """Return the calibrated score of each raw share, in [0, 1]."""
        shares = np.asarray(shares, dtype=np.float64)
        mapped = np.interp(shares, self.shares, self.precisions)
        return (1.0 - RANK_KEEPING_SLOPE) * mapped + RANK_KEEPING_SLOPE * shares

    def to_dict(self) -> dict:
        """Return the knots as a JSON-ready dict."""
        return {"shares": self.shares, "precisions": self.precisions}

    @classmethod
    def from_dict(cls, document: dict) -> "ScoreCalibration":
        """Read knots written by `to_dict`."""
        return cls(list(document["shares"]), list(document["precisions"]))
