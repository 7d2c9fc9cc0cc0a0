"""ThreatModel: projections against independent numpy references, random starts, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel, norm_of, project_delta, project_l1_ball


def numpy_l1_projection(v: np.ndarray, eps: float) -> np.ndarray:
    """Reference: find theta by bisection so that sum(max(|v| - theta, 0)) = eps."""
    if np.abs(v).sum() <= eps:
        return v
    low, high = 0.0, float(np.abs(v).max())
    for _ in range(200):
        mid = (low + high) / 2
        if np.maximum(np.abs(v) - mid, 0).sum() > eps:
            low = mid
        else:
            high = mid
    return np.sign(v) * np.maximum(np.abs(v) - high, 0)


@pytest.mark.parametrize("seed", range(5))
def test_l1_projection_matches_numpy_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn(8, 1, 6, 6, generator=gen, dtype=torch.float64) * 2
    eps = 3.0
    ours = project_l1_ball(delta, eps).numpy()
    for i in range(delta.shape[0]):
        ref = numpy_l1_projection(delta[i].numpy().ravel(), eps)
        np.testing.assert_allclose(ours[i].ravel(), ref, atol=1e-9)


def test_l2_projection_matches_numpy_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    delta = torch.randn(16, 3, 4, 4, generator=gen, dtype=torch.float64)
    eps = 2.0
    ours = project_delta(delta, "l2", eps).numpy().reshape(16, -1)
    flat = delta.numpy().reshape(16, -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    ref = np.where(norms > eps, flat * eps / norms, flat)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_projection_keeps_points_inside_unchanged() -> None:
    delta = torch.full((2, 1, 3, 3), 0.01)
    for norm in ("linf", "l2", "l1"):
        assert torch.equal(project_delta(delta, norm, 1.0), delta)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2", "l1"]),
    eps=st.floats(0.0, 5.0),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.01, 10.0),
)
def test_project_lands_in_ball_and_bounds(norm: str, eps: float, seed: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x = torch.rand(4, 1, 5, 5, generator=gen)
    x_adv = x + scale * torch.randn(4, 1, 5, 5, generator=gen)
    out = threat.project(x_adv, x)
    assert bool(threat.contains(out, x, tol=1e-6).all())
    # Projecting again changes (almost) nothing.
    assert torch.allclose(threat.project(out, x), out, atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_init_inside_ball_and_seeded(norm: str) -> None:
    threat = ThreatModel(norm=norm, eps=0.5 if norm == "linf" else 3.0)  # type: ignore[arg-type]
    x = torch.full((64, 1, 8, 8), 0.5)
    a = threat.random_init(x, torch.Generator().manual_seed(3))
    b = threat.random_init(x, torch.Generator().manual_seed(3))
    c = threat.random_init(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool(threat.contains(a, x).all())
    sizes = norm_of(a - x, norm)  # type: ignore[arg-type]
    # A uniform draw in the ball: not all at the centre, spread over radii.
    assert float(sizes.min()) > 0 and float(sizes.std()) > 0


def test_uniform_l2_radius_distribution() -> None:
    # For a uniform draw in a d-ball, (r / eps)^d is uniform on [0, 1]: its mean is 1/2.
    threat = ThreatModel(norm="l2", eps=1.0, bounds=(-100.0, 100.0))
    x = torch.zeros(4000, 1, 2, 2, dtype=torch.float64)
    r = norm_of(threat.random_init(x, torch.Generator().manual_seed(0)) - x, "l2")
    assert abs(float((r**4).mean()) - 0.5) < 0.03


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_pgd_random_start_has_a_uniform_radius(norm: str) -> None:
    # Wide bounds so nothing is clipped: the radius / eps must be uniform on [0, 1] (compare its deciles),
    # unlike random_init, whose radius in 64 dimensions sits almost on the sphere.
    threat = ThreatModel(norm=norm, eps=2.0, bounds=(-100.0, 100.0))  # type: ignore[arg-type]
    x = torch.zeros(20000, 1, 8, 8, dtype=torch.float64)
    start = threat.random_start(x, torch.Generator().manual_seed(0))
    r = norm_of(start - x, norm) / 2.0  # type: ignore[arg-type]
    assert float(r.max()) <= 1 + 1e-9
    deciles = torch.quantile(r, torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    assert torch.allclose(deciles, torch.linspace(0.1, 0.9, 9, dtype=torch.float64), atol=0.015)
    ball = norm_of(threat.random_init(x, torch.Generator().manual_seed(0)) - x, norm) / 2.0  # type: ignore[arg-type]
    assert float(torch.quantile(ball, 0.1)) > 0.9
    if norm == "l1":
        # Uniform direction on the l1 sphere: every coordinate is used, with both signs equally often.
        assert abs(float((start > 0).double().mean()) - 0.5) < 0.01


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_random_start_is_feasible_and_seeded(norm: str) -> None:
    threat = ThreatModel(norm=norm, eps=0.3 if norm == "linf" else 2.0)  # type: ignore[arg-type]
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a = threat.random_start(x, torch.Generator().manual_seed(3))
    b = threat.random_start(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, threat.random_start(x, torch.Generator().manual_seed(4)))
    assert bool(threat.contains(a, x).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_random_starts_in_half_precision_are_finite_and_feasible(norm: str, dtype: torch.dtype) -> None:
    # 1e-12 underflows to 0 in float16: a log of it would put inf / NaN into the start.
    threat = ThreatModel(norm=norm, eps=0.3 if norm == "linf" else 2.0)  # type: ignore[arg-type]
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(dtype)
    for start in (threat.random_init(x, torch.Generator().manual_seed(1)), threat.random_start(x)):
        assert start.dtype == dtype and bool(torch.isfinite(start).all())
        assert bool(threat.contains(start.float(), x.float(), tol=1e-2).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm": "l3"}, "unknown norm"),
        ({"eps": -0.1}, "eps must be"),
        ({"eps": float("nan")}, "eps must be"),
        ({"bounds": (1.0, 0.0)}, "bounds must be"),
    ],
)
def test_invalid_threat_models_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ThreatModel(**kwargs)  # type: ignore[arg-type]


def test_contains_flags_points_outside() -> None:
    threat = ThreatModel(norm="linf", eps=0.1)
    x = torch.full((2, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[1, 0, 0, 0] += 0.2
    assert threat.contains(x_adv, x).tolist() == [True, False]


@pytest.mark.parametrize(("norm", "eps"), [("l1", 10.0), ("l1", 0.5), ("l2", 2.0), ("l2", 0.05)])
def test_float32_projection_holds_to_1e6_in_mnist_dimensions(norm: str, eps: float) -> None:
    # Float32 rounding in x + delta must not push a 784-pixel perturbation past eps.
    gen = torch.Generator().manual_seed(11)
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x = torch.rand(2048, 1, 28, 28, generator=gen)
    x_adv = x + torch.randn(2048, 1, 28, 28, generator=gen)
    out = threat.project(x_adv, x)
    assert out.dtype == torch.float32
    assert float(threat.distance(out, x).max()) <= eps + 1e-6
    assert bool(threat.contains(out, x).all())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0), ("l1", 10.0)])
def test_an_attacks_inner_projection_differs_from_the_exact_one_by_rounding_only(
    norm: str, eps: float
) -> None:
    # exact=False (PGD's and APGD's steps) skips the float64 re-check and aims 16 float epsilons inside: its
    # points lie inside, so the exact projection every attack's result passes through leaves them as they are.
    gen = torch.Generator().manual_seed(5)
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x = torch.rand(512, 1, 28, 28, generator=gen)
    x_adv = x + torch.randn(512, 1, 28, 28, generator=gen)
    fast, exact = threat.project(x_adv, x, exact=False), threat.project(x_adv, x)
    if norm == "linf":  # one projection for both
        assert torch.equal(fast, exact)
        return
    assert float((fast - exact).abs().max()) <= 2e-6
    assert float(threat.distance(fast, x).max()) <= eps
    assert torch.equal(threat.project(fast, x), fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0), ("l2", 0.05), ("l1", 10.0)])
def test_the_in_place_inner_projection_gives_the_same_values(
    norm: str, eps: float, dtype: torch.dtype
) -> None:
    # PGD's step writes into its own buffer: bit for bit what project(..., exact=False) returns, in place
    # for linf / l2 in float32 / float64 (the caller's x untouched), a new tensor otherwise.
    gen = torch.Generator().manual_seed(12)
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x = torch.rand(256, 1, 28, 28, generator=gen).to(dtype)
    x_adv = (x.float() + torch.randn(256, 1, 28, 28, generator=gen)).to(dtype)
    x_adv[:8] = x[:8]  # some points already inside the ball (and the box)
    x_before, expected = x.clone(), threat.project(x_adv, x, exact=False)
    buffer = x_adv.clone()
    out = threat.project_inner_(buffer, x)
    assert torch.equal(out, expected)
    assert torch.equal(x, x_before)
    in_place = norm != "l1" and dtype != torch.bfloat16
    assert (out.data_ptr() == buffer.data_ptr()) == in_place


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_per_sample_budgets_project_like_one_budget_each(norm: str) -> None:
    gen = torch.Generator().manual_seed(6)
    threat = ThreatModel(norm=norm, eps=1.0)  # type: ignore[arg-type]
    x = torch.rand(4, 1, 6, 6, generator=gen)
    x_adv = x + torch.randn(4, 1, 6, 6, generator=gen)
    budgets = torch.tensor([0.05, 0.3, 1.0, 3.0])
    together = threat.project(x_adv, x, budgets)
    for i, eps in enumerate(budgets.tolist()):
        alone = ThreatModel(norm=norm, eps=eps).project(x_adv[i : i + 1], x[i : i + 1])  # type: ignore[arg-type]
        assert torch.allclose(together[i : i + 1], alone, atol=1e-6)
        assert float(threat.distance(together[i : i + 1], x[i : i + 1])) <= eps + 1e-6
