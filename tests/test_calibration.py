"""Tests of the isotonic score calibration."""

import numpy as np
import pytest

from mkt.calibration import ScoreCalibration


def test_calibration_maps_shares_to_observed_precision():
    shares = np.array([0.2, 0.3, 0.4, 0.5, 0.8, 0.9, 0.95, 1.0])
    is_correct = np.array([False, False, True, False, True, True, True, True])

    calibration = ScoreCalibration.fit(shares, is_correct)

    low, high = calibration.apply(np.array([0.25, 0.97]))
    assert low == pytest.approx(0.0, abs=1e-5)
    assert high == pytest.approx(1.0, abs=1e-5)


def test_calibration_keeps_the_order_of_raw_shares():
    shares = np.array([0.2, 0.4, 0.6, 0.8])
    is_correct = np.array([True, False, True, True])
    calibration = ScoreCalibration.fit(shares, is_correct)

    # 0.3 and 0.35 fall in one flat step of the map, yet keep their order.
    mapped = calibration.apply(np.array([0.3, 0.35, 0.7, 0.9]))

    assert np.all(np.diff(mapped) > 0)
    assert np.all((mapped >= 0) & (mapped <= 1))


def test_calibration_round_trips_through_a_dict():
    calibration = ScoreCalibration.fit(
        np.array([0.1, 0.5, 0.9]), np.array([False, True, True])
    )

    loaded = ScoreCalibration.from_dict(calibration.to_dict())

    shares = np.linspace(0, 1, 11)
    assert np.array_equal(loaded.apply(shares), calibration.apply(shares))


def test_calibration_rejects_empty_validation():
    with pytest.raises(ValueError, match="got 0"):
        ScoreCalibration.fit(np.array([]), np.array([], dtype=bool))


def test_runner_ups_share_what_top_leaves():
    from mkt.classifier import KnnClassifier

    vectors = np.array([[1, 0], [0.9, 0.44], [0.8, 0.6]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # Every share up to 0.5 maps to precision 0.6, higher ones to 0.95.
    calibration = ScoreCalibration([0.0, 0.5, 0.51, 1.0], [0.6, 0.6, 0.95, 0.95])
    classifier = KnnClassifier.build(
        vectors, ["a", "b", "c"], {}, k=3, vote_temperature=1.0
    )
    classifier.calibration = calibration

    (prediction,) = classifier.predict(np.array([[1, 0]], dtype=np.float32), top_k=3)

    top, *others = [candidate.score for candidate in prediction.candidates]
    assert top == pytest.approx(0.6, abs=1e-3)
    assert sum(others) == pytest.approx(0.4, abs=1e-3)
    assert others[0] > others[1] > 0
