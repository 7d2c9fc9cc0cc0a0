"""Randomized smoothing: statistics against scipy, certificates against an independent Clopper-Pearson bound,
certified radii that hold against an attack, and noise-augmented training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch import Tensor, nn

from advrobust.attacks import EOT, PGD
from advrobust.data import ImageDataset
from advrobust.defenses import (
    GaussianAugment,
    SmoothedClassifier,
    beta_quantile,
    betainc,
    binomial_test_half,
    certified_accuracy,
    certify_dataset,
    clopper_pearson_lower,
)
from advrobust.errors import ConfigError
from advrobust.models import create_model
from advrobust.threat import ThreatModel
from advrobust.training import TrainConfig, create_objective, list_objectives, train

Batch = tuple[Tensor, Tensor]


def test_incomplete_beta_and_its_quantile_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.2, 3000, 400), rng.uniform(0.2, 3000, 400)
    x = rng.uniform(0, 1, 400)
    ours = betainc(torch.tensor(a), torch.tensor(b), torch.tensor(x)).numpy()
    np.testing.assert_allclose(ours, special.betainc(a, b, x), rtol=1e-9, atol=1e-12)
    q = rng.uniform(1e-4, 1 - 1e-4, 400)
    quantiles = beta_quantile(torch.tensor(q), torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(quantiles, stats.beta.ppf(q, a, b), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("trials", [10, 1000, 100_000])
def test_clopper_pearson_and_binomial_test_match_scipy(trials: int) -> None:
    rng = np.random.default_rng(trials)
    k = np.concatenate([rng.integers(0, trials + 1, 40), [0, 1, trials // 2, trials - 1, trials]])
    alpha = 0.001
    ours = clopper_pearson_lower(torch.tensor(k), trials, alpha).numpy()
    expected = [
        stats.binomtest(int(s), trials).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        for s in k
    ]
    np.testing.assert_allclose(ours, expected, rtol=1e-8, atol=1e-12)
    m = rng.integers(1, trials + 1, 40)
    s = np.array([rng.integers(0, mm + 1) for mm in m])
    p_values = binomial_test_half(torch.tensor(s), torch.tensor(m)).numpy()
    expected = [stats.binomtest(int(si), int(mi), 0.5).pvalue for si, mi in zip(s, m, strict=True)]
    np.testing.assert_allclose(p_values, expected, rtol=1e-8, atol=1e-12)


def test_certify_agrees_with_an_independent_clopper_pearson_bound(
    trained_cnn: nn.Module, batch: Batch
) -> None:
    x = batch[0][:12]
    smoothed = SmoothedClassifier(trained_cnn, sigma=0.25)
    n0, n, alpha = 50, 600, 0.001
    prediction, radius = smoothed.certify(
        x, n0=n0, n=n, alpha=alpha, batch_size=256, generator=torch.Generator().manual_seed(0)
    )
    # The same draws, counted again, and bounded by scipy.
    generator = torch.Generator().manual_seed(0)
    guess = smoothed.counts(x, n0, batch_size=256, generator=generator).argmax(dim=1)
    counts = smoothed.counts(x, n, batch_size=256, generator=generator)
    for i in range(x.shape[0]):
        k = int(counts[i, guess[i]])
        low = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        if low > 0.5:
            assert int(prediction[i]) == int(guess[i])
            assert float(radius[i]) == pytest.approx(0.25 * stats.norm.ppf(low), rel=1e-8)
        else:
            assert int(prediction[i]) == -1 and float(radius[i]) == 0.0
    assert int((prediction >= 0).sum()) >= 8 and float(radius.max()) > 0.4


class _Coin(nn.Module):
    """Class 0 or 1 by the sign of the noise on the first pixel: a base classifier at exactly 50/50."""

    def forward(self, x: Tensor) -> Tensor:
        z = x[:, 0, 0, 0] - 0.5
        return torch.stack([z, -z, torch.full_like(z, -5.0)], dim=1)


class _Biased(nn.Module):
    """Class 2 with probability Phi(shift / sigma) under noise, else class 0."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: Tensor) -> Tensor:
        z = x[:, 0, 0, 0] - 0.5 + self.shift
        return torch.stack([-z, torch.full_like(z, -5.0), z], dim=1)


def test_predict_abstains_on_a_tie_and_answers_a_clear_majority() -> None:
    x = torch.full((6, 1, 4, 4), 0.5)
    generator = torch.Generator().manual_seed(0)
    coin = SmoothedClassifier(_Coin(), sigma=0.5).predict(x, n=400, alpha=0.001, generator=generator)
    assert (coin == -1).all()
    clear = SmoothedClassifier(_Biased(0.2), sigma=0.5).predict(x, n=400, alpha=0.001, generator=generator)
    assert (clear == 2).all()
    # The certified radius follows the base classifier's true probability, Phi(0.2 / 0.5) ~ 0.655.
    _, radius = SmoothedClassifier(_Biased(0.2), sigma=0.5).certify(x, n=20_000, generator=generator)
    assert ((radius > 0.15) & (radius < 0.2)).all()  # sigma * Phi^-1(0.655) = 0.2, less the confidence margin


def test_counts_cover_every_draw_whatever_the_batch_size(trained_cnn: nn.Module, batch: Batch) -> None:
    x = batch[0][:5]
    smoothed = SmoothedClassifier(trained_cnn, sigma=0.25)
    for n, batch_size in ((30, 1000), (70, 32), (7, 3)):
        counts = smoothed.counts(x, n, batch_size=batch_size, generator=torch.Generator().manual_seed(0))
        assert counts.shape == (5, 10) and (counts.sum(dim=1) == n).all()
    first = smoothed.counts(x, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, smoothed.counts(x, 50, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ConfigError):
        smoothed.predict(x, alpha=1.5)
    with pytest.raises(ConfigError):
        SmoothedClassifier(trained_cnn, sigma=0.0)


def test_certified_radius_holds_against_an_attack(trained_cnn: nn.Module, batch: Batch) -> None:
    smoothed = SmoothedClassifier(trained_cnn, sigma=0.25).eval()
    x, y = batch[0][:24], batch[1][:24]
    prediction, radius = smoothed.certify(x, n0=100, n=1000, generator=torch.Generator().manual_seed(0))
    chosen = ((prediction == y) & (radius > 0.2)).nonzero().squeeze(1)[:5]
    assert chosen.numel() == 5
    flipped_beyond = 0
    for i in chosen.tolist():
        xi, ci = x[i : i + 1], prediction[i : i + 1]
        for scale, must_hold in ((1.0, True), (6.0, False)):
            threat = ThreatModel(norm="l2", eps=scale * float(radius[i]))
            # The attack on a smoothed classifier: EOT over the noise (Salman et al., 2019).
            attack = EOT(attack=PGD(threat=threat, steps=20), samples=16)
            torch.manual_seed(i)
            x_adv = attack(smoothed, xi, ci, generator=torch.Generator().manual_seed(i))
            assert threat.contains(x_adv, xi).all()
            # The smoothed classifier's prediction, estimated from many noisy draws of the base model.
            counts = smoothed.counts(x_adv, 2000, generator=torch.Generator().manual_seed(10 + i))
            same = int(counts.argmax(dim=1)) == int(ci)
            if must_hold:
                assert same, (
                    f"sample {i}: prediction flipped inside the certified radius {float(radius[i]):.3f}"
                )
            else:
                flipped_beyond += not same
    assert flipped_beyond >= 3  # the attack is strong enough to flip far outside the radius


def test_certify_dataset_reports_certified_accuracy(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch[0][:10], batch[1][:10]
    smoothed = SmoothedClassifier(trained_cnn, sigma=0.25)
    result = certify_dataset(
        smoothed,
        x,
        y,
        n0=20,
        n=200,
        radii=[0.0, 0.25, 5.0],
        chunk=4,
        generator=torch.Generator().manual_seed(0),
    )
    prediction, radius = torch.tensor(result.prediction), torch.tensor(result.radius, dtype=torch.float64)
    assert result.certified == certified_accuracy(prediction, radius, y, [0.0, 0.25, 5.0])
    assert result.certified[0] == result.accuracy >= result.certified[1] > result.certified[2] == 0.0
    data = result.to_dict()
    assert data["schema"] == "advrobust.certify/1" and len(data["radius"]) == 10


def test_gaussian_augment_trains_a_base_model_that_works_under_noise(
    trained_cnn: nn.Module, mini_train: ImageDataset, batch: Batch
) -> None:
    assert "gaussian-augment" in list_objectives()
    objective = create_objective("gaussian-augment", sigma=1.0)
    assert isinstance(objective, GaussianAugment) and objective.params() == {"sigma": 1.0}
    torch.manual_seed(0)
    model = create_model("small-cnn", num_classes=10, in_channels=1, mean=[0.1307], std=[0.3081])
    train(model, mini_train, objective=objective, config=TrainConfig(epochs=2, batch_size=32, seed=0))
    x, y = batch

    def accuracy_under_noise(base: nn.Module) -> float:
        counts = SmoothedClassifier(base, sigma=1.0).counts(x, 50, generator=torch.Generator().manual_seed(0))
        return float(counts.gather(1, y.unsqueeze(1)).sum()) / (50 * len(y))

    # The clean-trained model falls to about 40% under this noise; noise-augmented training keeps about 70%.
    assert accuracy_under_noise(model) > accuracy_under_noise(trained_cnn) + 0.2
