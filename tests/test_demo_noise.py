"""The demo's AR(1) noise: coefficient, variance after cleaning, and SNR bookkeeping."""

from __future__ import annotations

import numpy as np

from brainllm import demo


def test_ar1_noise_has_the_coefficient_and_unit_variance():
    rng = np.random.default_rng(0)
    phi = np.array([0.0, 0.3, 0.7])
    noise = demo.ar1_noise(20000, np.repeat(phi, 20), rng)
    lag1 = [np.corrcoef(noise[1:, j], noise[:-1, j])[0, 1] for j in range(noise.shape[1])]
    np.testing.assert_allclose(np.reshape(lag1, (3, 20)).mean(1), phi, atol=0.01)
    np.testing.assert_allclose(noise.var(0).mean(), 1.0, atol=0.02)


def test_ar1_noise_gain_matches_monte_carlo():
    rng = np.random.default_rng(1)
    cleaning = demo.cleaning_operator(160, demo.TR)
    phi = np.array([0.0, 0.4, 0.7])
    gain = demo.ar1_noise_gain(cleaning, phi)
    for value, expected in zip(phi, gain):
        cleaned = cleaning @ demo.ar1_noise(160, np.full(4000, value), rng)
        empirical = ((cleaned - cleaned.mean(0)) ** 2).sum(0).mean() / cleaning.shape[0]
        assert abs(empirical - expected) < 0.03 * expected


def test_volume_noise_coefficients_in_range():
    volume = demo.make_subject_volume("UTS01", np.random.default_rng(2))
    assert volume.noise_ar1.shape == volume.snr.shape
    assert demo.NOISE_AR1_RANGE[0] <= volume.noise_ar1.min() and volume.noise_ar1.max() <= demo.NOISE_AR1_RANGE[1]
    assert (volume.snr == 0).sum() > 0.3 * volume.snr.size  # pure-noise voxels are kept
