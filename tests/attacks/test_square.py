"""Square on a really trained small CNN: strength, no gradients ever, the query budget per sample, seeds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from advrobust.attacks import PGD, Square
from advrobust.attacks.square import square_fraction, square_pattern
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


class Spy(nn.Module):
    """Wraps a model: records whether autograd was on, makes any backward raise, and counts the queries of
    each original sample (a forwarded input belongs to the original nearest to it in linf)."""

    def __init__(self, model: nn.Module, originals: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.model = model
        self.originals = originals.flatten(1)
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(()))  # so that outputs need gradients whenever autograd is on
        self.counts = torch.zeros(originals.shape[0], dtype=torch.long)
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        gap = (x.detach().flatten(1)[:, None, :] - self.originals[None]).abs().amax(dim=2)
        nearest = gap.min(dim=1)
        assert float(nearest.values.max()) <= self.eps + 1e-6  # every input is identified
        self.counts += torch.bincount(nearest.indices, minlength=self.counts.shape[0])
        out: torch.Tensor = self.model(x) * self.gain
        if out.requires_grad:
            out.register_hook(self._refuse)
        return out

    @staticmethod
    def _refuse(grad: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a gradient-free attack ran backward through the model")


@pytest.fixture(scope="module")
def separated(batch: Batch) -> Batch:
    """64 test images more than 0.6 apart in linf, so a point within eps 0.3 has one nearest original."""
    x, y = batch
    x, y = x[:64], y[:64]
    gap = (x.flatten(1)[:, None, :] - x.flatten(1)[None]).abs().amax(dim=2)
    assert float((gap + 2 * torch.eye(64)).min()) > 0.6
    return x, y


@pytest.mark.parametrize(("norm", "eps", "drop"), [("linf", 0.3, 0.5), ("l2", 2.0, 0.15)])
def test_bounds_eps_and_accuracy_drop(
    trained_cnn: nn.Module, separated: Batch, norm: str, eps: float, drop: float
) -> None:
    # 300 queries: l2 Square is slow to start (about 0.69 accuracy here, as the AutoAttack code gets).
    x, y = separated
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    x_adv = Square(threat=threat, queries=300)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    assert float(threat.distance(x_adv, x).max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    clean = float((predict(trained_cnn, x) == y).float().mean())
    assert float((predict(trained_cnn, x_adv) == y).float().mean()) < clean - drop


def test_linf_03_breaks_a_normal_model_within_1000_queries(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    x_adv, used = Square(threat=ThreatModel(eps=0.3), queries=1000).run_with_queries(
        trained_cnn, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert float((predict(trained_cnn, x_adv) == y).float().mean()) < 0.05
    assert int(used.max()) <= 1000
    assert float(used.float().mean()) < 100  # fooled samples stop querying


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
def test_never_backward_and_never_over_budget(
    trained_cnn: nn.Module, separated: Batch, norm: str, eps: float
) -> None:
    # A small eps leaves most samples standing, so they spend the whole budget.
    x, y = separated
    threat = ThreatModel(norm=norm, eps=eps)  # type: ignore[arg-type]
    spy = Spy(trained_cnn, x, eps=eps)
    attack = Square(threat=threat, queries=40)
    x_adv, used = attack.run_with_queries(spy, x, y, generator=torch.Generator().manual_seed(0), check=False)
    assert attack.gradient_free
    assert spy.grad_enabled and not any(spy.grad_enabled)
    assert spy.gain.grad is None
    assert torch.equal(spy.counts, used)
    assert int(used.max()) == 40 and int(used.min()) >= 1
    survivors = predict(trained_cnn, x_adv) == y
    assert bool(survivors.any()) and bool((used[survivors] == 40).all())
    # The attack call makes its contract check without gradients too, and the first query is the clean input.
    spy.grad_enabled.clear()
    attack(spy, x, y)
    assert not any(spy.grad_enabled)
    wrong = predict(trained_cnn, x) != y
    _, used = attack.run_with_queries(trained_cnn, x, y)
    assert bool((used[wrong] == 1).all())
    _, used = Square(threat=threat, queries=1).run_with_queries(trained_cnn, x, y)
    assert bool((used == 1).all())


def test_seed_reproduces_and_differs(trained_cnn: nn.Module, separated: Batch) -> None:
    x, y = separated
    attack = Square(threat=ThreatModel(eps=0.1), queries=30)
    a, qa = attack.run_with_queries(trained_cnn, x, y, generator=torch.Generator().manual_seed(1))
    b, qb = attack.run_with_queries(trained_cnn, x, y, generator=torch.Generator().manual_seed(1))
    c, _ = attack.run_with_queries(trained_cnn, x, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(qa, qb)
    assert not torch.equal(a, c)
    torch.testing.assert_close(attack(trained_cnn, x, y, generator=torch.Generator().manual_seed(1)), a)


def test_targeted_hits_targets(trained_cnn: nn.Module, separated: Batch) -> None:
    x, y = separated
    targets = (y + 1) % 10
    x_adv = Square(threat=ThreatModel(eps=0.3), queries=1000)(
        trained_cnn, x, y, targets=targets, generator=torch.Generator().manual_seed(0)
    )
    assert float((predict(trained_cnn, x_adv) == targets).float().mean()) > 0.7


def test_weaker_than_white_box_at_a_small_budget(trained_cnn: nn.Module, separated: Batch) -> None:
    x, y = separated
    threat = ThreatModel(eps=0.1)
    square = Square(threat=threat, queries=100)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    pgd = PGD(threat=threat, steps=20)(trained_cnn, x, y, generator=torch.Generator().manual_seed(0))
    clean = (predict(trained_cnn, x) == y).float().mean()
    square_acc = (predict(trained_cnn, square) == y).float().mean()
    assert float((predict(trained_cnn, pgd) == y).float().mean()) < float(square_acc) < float(clean)


def test_schedule_and_l2_pattern() -> None:
    # The paper's schedule, given for 10,000 iterations, rescaled to the budget.
    assert square_fraction(0.8, 0, 10000) == 0.8
    assert square_fraction(0.8, 10, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 501, 10000) == 0.8 / 16
    assert square_fraction(0.8, 9999, 10000) == 0.8 / 512
    assert square_fraction(0.8, 500, 1000) == square_fraction(0.8, 5000, 10000)
    pattern = square_pattern(7, torch.device("cpu"))
    assert pattern.shape == (7, 7)
    torch.testing.assert_close(pattern.norm(), torch.tensor(1.0, dtype=pattern.dtype))
    assert bool((pattern[:3] > 0).all()) and bool((pattern[3:] < 0).all())
    assert float(pattern[1, 3]) == float(pattern[:3].max())  # the bump peaks at its centre


def test_errors() -> None:
    with pytest.raises(ConfigError, match="l1"):
        Square(threat=ThreatModel(norm="l1", eps=10.0))
    with pytest.raises(ConfigError, match="queries"):
        Square(threat=ThreatModel(), queries=0)
    with pytest.raises(ConfigError, match="p_init"):
        Square(threat=ThreatModel(), p_init=1.5)


@pytest.mark.parametrize("channels", [1, 3])
def test_linf_proposal_changes_exactly_one_square_to_x_plus_or_minus_eps(channels: int) -> None:
    # Every pixel already at x + eps: a square drawn with + signs would change nothing, so its signs flip.
    threat = ThreatModel(norm="linf", eps=0.1)
    x = torch.rand(64, channels, 12, 12, generator=torch.Generator().manual_seed(0))
    high, low = threat.clamp(x + 0.1), threat.clamp(x - 0.1)
    best = high.clone()
    attack = Square(threat=threat)
    candidate, (pixels, values, current) = attack._propose_linf(
        high, low, best, 0.1, torch.Generator().manual_seed(1)
    )
    changed = candidate != best
    side = round((0.1 * 144) ** 0.5)
    assert pixels.shape == (64, channels, side * side)
    # Outside the square the candidate is the best point bit for bit; inside, each value is x + eps or x - eps.
    inside = torch.zeros_like(changed).flatten(2).scatter_(2, pixels, True).view_as(changed)
    assert not changed[~inside].any()
    assert ((candidate == high) | (candidate == low))[inside].all()
    # Where x - eps and x + eps differ after clamping, the flipped square changes the image.
    movable = (high != low).flatten(1).any(dim=1)
    assert changed.flatten(1).any(dim=1)[movable].all()
    assert torch.equal(current, best.flatten(2).gather(2, pixels))
    assert torch.equal(values, candidate.flatten(2).gather(2, pixels))


def _dense_l2_update(
    x: torch.Tensor,
    best: torch.Tensor,
    eps: float,
    side: int,
    corners: list[tuple[int, int]],
    flip: bool,
    signs: torch.Tensor,
) -> torch.Tensor:
    """The paper's l2 step written with whole-image masks, for one sample: the mass of both squares (and what
    is left of the budget) goes into the first, reshaped by the bump; the second is emptied; the result is
    rescaled to the eps-sphere and clipped to [0, 1]."""
    c, h, w = x.shape
    masks = []
    for top, left in corners:
        mask = torch.zeros(1, h, w, dtype=torch.bool)
        mask[:, top : top + side, left : left + side] = True
        masks.append(mask)
    first, second = masks
    delta = best - x
    channel_norm = lambda t: t.pow(2).sum(dim=(1, 2), keepdim=True).sqrt()  # noqa: E731
    budget = (
        (eps**2 - delta.pow(2).sum()).clamp_min(0) / c + channel_norm(delta * (first | second)) ** 2
    ).sqrt()
    pattern = square_pattern(side, torch.device("cpu")).float()
    bump = torch.zeros(1, h, w)
    top, left = corners[0]
    bump[:, top : top + side, left : left + side] = pattern.t() if flip else pattern
    fresh = bump * signs.reshape(c, 1, 1) + delta * first / (channel_norm(delta * first) + 1e-12)
    fresh = fresh / (channel_norm(fresh) + 1e-12) * budget
    delta = torch.where(first, fresh, torch.where(second, torch.zeros_like(delta), delta))
    return (x + delta / delta.norm().clamp_min(1e-12) * eps).clamp(0, 1)


@pytest.mark.parametrize("channels", [1, 3])
def test_l2_proposal_is_the_papers_update_with_its_random_draws(channels: int) -> None:
    # The gathered proposal against the same update written with whole-image masks, replaying its draws:
    # both squares' corners (top, then left), the bump's orientation, one sign per channel.
    eps, n, h = 1.0, 16, 14
    threat = ThreatModel(norm="l2", eps=eps)
    attack = Square(threat=threat)
    x = torch.rand(n, channels, h, h, generator=torch.Generator().manual_seed(0))
    best = attack._init(x, torch.Generator().manual_seed(1))
    for p, seed in [(0.3, 2), (0.05, 3), (0.01, 4)]:
        candidate = attack._propose(x, best, p, torch.Generator().manual_seed(seed))
        side = max(round((p * h * h) ** 0.5), 3)
        side = min(side + 1 - side % 2, h)
        draws = torch.Generator().manual_seed(seed)
        corners = [
            [(int(top), int(left)) for top, left in zip(tops, lefts, strict=True)]
            for tops, lefts in (
                (
                    torch.randint(0, h - side + 1, (n,), generator=draws),
                    torch.randint(0, h - side + 1, (n,), generator=draws),
                )
                for _ in range(2)
            )
        ]
        flips = torch.randint(0, 2, (n,), generator=draws)
        signs = torch.randint(0, 2, (n, channels, 1), generator=draws).float() * 2 - 1
        for i in range(n):
            expected = _dense_l2_update(
                x[i], best[i], eps, side, [corners[0][i], corners[1][i]], bool(flips[i]), signs[i]
            )
            torch.testing.assert_close(candidate[i], expected, atol=1e-5, rtol=0)
        assert bool(((candidate - x).flatten(1).norm(dim=1) <= eps + 1e-5).all())
        best = candidate
