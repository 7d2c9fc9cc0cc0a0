"""Attack losses against direct numpy references; DLR's scale invariance where cross-entropy saturates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advrobust.attacks import attack_loss, dlr, dlr_targeted, input_gradient, is_adversarial, margin
from advrobust.errors import ConfigError


def numpy_dlr(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.empty(len(z))
    for i in range(len(z)):
        s = np.sort(z[i])[::-1]
        others = np.delete(z[i], y[i])
        out[i] = -(z[i, y[i]] - others.max()) / (s[0] - s[2] + 1e-12)
    return out


def numpy_dlr_targeted(z: np.ndarray, y: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.empty(len(z))
    for i in range(len(z)):
        s = np.sort(z[i])[::-1]
        out[i] = -(z[i, y[i]] - z[i, t[i]]) / (s[0] - (s[2] + s[3]) / 2 + 1e-12)
    return out


def random_case(seed: int, n: int = 64, k: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (n,), generator=g)
    targets = (y + torch.randint(1, k, (n,), generator=g)) % k
    return logits, y, targets


@pytest.mark.parametrize("seed", range(5))
def test_dlr_matches_numpy(seed: int) -> None:
    logits, y, targets = random_case(seed)
    z, yn, tn = logits.numpy(), y.numpy(), targets.numpy()
    np.testing.assert_allclose(dlr(logits, y).numpy(), numpy_dlr(z, yn), rtol=1e-10)
    np.testing.assert_allclose(
        dlr_targeted(logits, y, targets).numpy(), numpy_dlr_targeted(z, yn, tn), rtol=1e-10
    )
    np.testing.assert_allclose(attack_loss(logits, y, None, "dlr").numpy(), numpy_dlr(z, yn), rtol=1e-10)
    for name in ("dlr", "dlr-targeted"):
        got = attack_loss(logits, y, targets, name).numpy()  # type: ignore[arg-type]
        np.testing.assert_allclose(got, numpy_dlr_targeted(z, yn, tn), rtol=1e-10)


def test_dlr_sign_follows_success() -> None:
    logits, y, targets = random_case(7, n=256)
    assert torch.equal(dlr(logits, y) > 0, is_adversarial(logits, y, None))
    # Targeted DLR is positive once the target's logit beats the true class's.
    assert torch.equal(
        dlr_targeted(logits, y, targets) > 0,
        logits.gather(1, targets[:, None])[:, 0] > logits.gather(1, y[:, None])[:, 0],
    )


def test_dlr_is_scale_invariant_where_ce_saturates() -> None:
    logits, y, targets = random_case(3)
    logits = logits.float()
    big = logits * 100
    torch.testing.assert_close(dlr(big, y), dlr(logits, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        dlr_targeted(big, y, targets), dlr_targeted(logits, y, targets), rtol=1e-5, atol=1e-6
    )
    # Shifting all logits changes nothing either.
    torch.testing.assert_close(dlr(logits + 7.0, y), dlr(logits, y), rtol=1e-5, atol=1e-5)
    # Cross-entropy's gradient vanishes on confidently correct samples once the logits are scaled.
    correct = logits.argmax(1) == y
    assert bool(correct.any())

    def ce_grad(z: torch.Tensor) -> torch.Tensor:
        z = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(attack_loss(z, y, None, "ce").sum(), z)
        return g

    def dlr_grad(z: torch.Tensor) -> torch.Tensor:
        z = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(attack_loss(z, y, None, "dlr").sum(), z)
        return g

    saturated = ce_grad(big)[correct].abs().amax(dim=1)
    assert bool((saturated < 1e-20).all())
    assert bool((dlr_grad(big)[correct].abs().amax(dim=1) > 0).all())


def test_old_losses_unchanged() -> None:
    logits, y, targets = random_case(11)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(attack_loss(logits, y, None, "ce"), ce)
    torch.testing.assert_close(attack_loss(logits, y, None, "margin"), -margin(logits, y))
    torch.testing.assert_close(attack_loss(logits, y, targets, "margin"), margin(logits, targets))


def test_dlr_errors_say_what_to_do() -> None:
    logits, y, _ = random_case(0, k=10)
    with pytest.raises(ConfigError, match="needs targets"):
        attack_loss(logits, y, None, "dlr-targeted")
    with pytest.raises(ConfigError, match="at least 3 classes"):
        dlr(logits[:, :2], y.clamp(max=1))
    with pytest.raises(ConfigError, match="at least 4 classes"):
        dlr_targeted(logits[:, :3], y.clamp(max=1), (y.clamp(max=1) + 1))


def test_input_gradient_with_dlr() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    x = torch.rand(8, 1, 4, 4)
    y = torch.arange(8)
    grad, logits, loss = input_gradient(model, x, y, None, "dlr")
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, dlr(logits, y))
