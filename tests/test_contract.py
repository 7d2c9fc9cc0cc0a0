"""The model contract: each kind of bad input gets a clear error naming the fix."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.overrides import TorchFunctionMode

from advrobust.contract import check_inputs, check_labels, check_model_io, check_outputs, eval_mode
from advrobust.errors import ConfigError, InputError


def test_valid_inputs_pass() -> None:
    check_inputs(torch.rand(3, 1, 4, 4))
    check_labels(torch.tensor([0, 9, 3]), 3, 10)
    check_outputs(torch.randn(3, 10), 3)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8), "uint8"),
        (torch.rand(2, 1, 4, 4) * 255, "divide by 255"),
        (torch.rand(2, 4, 4), "unsqueeze"),
        (torch.full((2, 1, 4, 4), float("nan")), "NaN"),
        (torch.randint(0, 2, (2, 1, 4, 4)), "dtype"),
        (torch.rand(2, 1, 4, 4) - 0.5, "bounds"),
    ],
)
def test_bad_inputs_are_named(x: torch.Tensor, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check_inputs(x)


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (torch.tensor([0, 10]), r"span \[0, 10\].*10 classes"),
        (torch.tensor([-1, 2]), "span"),
        (torch.tensor([0.0, 1.0]), "int64"),
        (torch.eye(10)[:2].long(), "one-hot"),
    ],
)
def test_bad_labels_are_named(y: torch.Tensor, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check_labels(y, 2, 10)


def test_probability_outputs_are_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.Softmax(dim=1))
    with pytest.raises(InputError, match=r"probabilities.*remove the final softmax"):
        check_model_io(model, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 3]))


def test_log_probabilities_are_accepted() -> None:
    # log-softmax outputs are logits up to a per-row constant: attacks work on them unchanged.
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.LogSoftmax(dim=1))
    check_model_io(model, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 3]))


def test_wrong_output_shape_is_named() -> None:
    with pytest.raises(InputError, match="expected logits of shape"):
        check_outputs(torch.randn(3, 10, 1), 3)


def test_eval_mode_restores_each_module() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]


@settings(max_examples=50, deadline=None)
@given(low=st.floats(-2, 2), span=st.floats(0.0, 3.0), seed=st.integers(0, 1000))
def test_check_inputs_accepts_exactly_in_bounds(low: float, span: float, seed: int) -> None:
    x = low + span * torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(seed))
    inside = float(x.min()) >= -1e-6 and float(x.max()) <= 1 + 1e-6
    if inside:
        check_inputs(x)
    else:
        with pytest.raises(InputError):
            check_inputs(x)


def test_an_attack_call_checks_the_model_on_a_probe_of_the_batch() -> None:
    from advrobust.attacks import FGSM
    from advrobust.attacks.base import CHECK_PROBE
    from advrobust.threat import ThreatModel

    seen: list[int] = []
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    x, y = torch.rand(100, 1, 4, 4), torch.randint(0, 3, (100,))
    FGSM(threat=ThreatModel(eps=0.1))(net, x, y)
    assert seen == [CHECK_PROBE, 100]  # the probe, then the attack's own forward
    with pytest.raises(InputError, match=r"probabilities"):
        FGSM(threat=ThreatModel(eps=0.1))(torch.nn.Sequential(net, torch.nn.Softmax(dim=1)), x, y)


class _HostReads(TorchFunctionMode):
    """Counts reads of tensor values on the host (each one waits for a GPU's queue)."""

    READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_an_attack_call_reads_its_checks_back_once() -> None:
    from advrobust.attacks import FGSM
    from advrobust.threat import ThreatModel

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(20, 1, 4, 4), torch.randint(0, 3, (20,))
    attack = FGSM(threat=ThreatModel(eps=0.1))
    with _HostReads() as mode:
        attack(net, x, y)
    assert mode.reads == ["tolist"]
    with _HostReads() as mode:
        attack(net, x, y, targets=(y + 1) % 3)
    assert mode.reads == ["tolist"]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda x, y, t: (x * 255, y, None), InputError, "divide by 255"),
        (lambda x, y, t: (x.masked_fill(x > 0.9, float("nan")), y, None), InputError, "NaN"),
        (lambda x, y, t: (x, y + 3, None), InputError, r"labels span \[3, 5\].*3 classes"),
        (lambda x, y, t: (x, y, t + 3), InputError, r"targets span \[3, 5\]"),
        (lambda x, y, t: (x, y, y), ConfigError, "targets equal the true labels"),
    ],
)
def test_an_attack_call_names_each_bad_input(change, error: type[Exception], match: str) -> None:  # type: ignore[no-untyped-def]
    from advrobust.attacks import FGSM
    from advrobust.threat import ThreatModel

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 3
    targets = (y + 1) % 3
    x, y, targets = change(x, y, targets)
    with pytest.raises(error, match=match):
        FGSM(threat=ThreatModel(eps=0.1))(net, x, y, targets=targets)


def test_an_attack_call_reports_bad_inputs_before_a_model_that_fails_on_them() -> None:
    from advrobust.attacks import FGSM
    from advrobust.threat import ThreatModel

    class Strict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not bool(torch.isfinite(x).all()):
                raise ValueError("this model refuses NaN")
            return self.linear(x.flatten(1))

    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    attack = FGSM(threat=ThreatModel(eps=0.1))
    with pytest.raises(InputError, match="NaN"):
        attack(Strict(), x.masked_fill(x > 0.5, float("nan")), y)
    with pytest.raises(ValueError, match="refuses NaN"):  # valid inputs: the model's own error stands
        attack(nn.Sequential(Strict(), nn.Unflatten(1, (1, 1, 3)), nn.Flatten(), _Fails()), x, y)
    with pytest.raises(InputError, match=r"labels are on meta.*\.to\(x\.device\)"):
        attack(Strict(), x, y.to("meta"))


def test_huge_finite_float64_logits_are_logits() -> None:
    check_outputs(torch.tensor([[1e300, -1e300], [0.0, 1.0]], dtype=torch.float64), 2)


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("this model refuses NaN, and everything else too")
