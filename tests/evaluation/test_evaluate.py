"""evaluate(): per-sample worst case, cascade, seeds, JSON schema, on a really trained CNN."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from advrobust.attacks import FGSM, PGD
from advrobust.data import ImageDataset
from advrobust.errors import ConfigError, InputError
from advrobust.evaluation import SCHEMA, EvalResult, evaluate, load_results, save_run
from advrobust.threat import ThreatModel

Batch = tuple[torch.Tensor, torch.Tensor]


def test_worst_case_over_attacks(trained_cnn: nn.Module, batch: Batch) -> None:
    threat = ThreatModel(eps=0.1)
    attacks = [FGSM(threat=threat), PGD(threat=threat, steps=20)]
    result = evaluate(trained_cnn, batch, attacks, cascade=False, batch_size=64)
    clean = torch.tensor(result.clean_correct)
    robust = torch.tensor(result.robust_correct)
    assert result.n == 200
    assert result.clean.value > 0.9
    assert result.robust.value < result.clean.value
    assert bool((robust <= clean).all())  # robust implies clean-correct
    # Worst case per sample: robust only if every attack failed on it.
    assert result.robust.correct <= min(a.accuracy.correct for a in result.attacks)
    assert all(a.violations == 0 for a in result.attacks)
    assert result.attacks[1].accuracy.value <= result.attacks[0].accuracy.value


def test_cascade_gives_the_same_robust_accuracy_for_less_work(trained_cnn: nn.Module, batch: Batch) -> None:
    threat = ThreatModel(eps=0.1)
    attacks = [FGSM(threat=threat), PGD(threat=threat, steps=10, random_start=False)]
    full = evaluate(trained_cnn, batch, attacks, cascade=False, batch_size=200)
    cascade = evaluate(trained_cnn, batch, attacks, cascade=True, batch_size=200)
    assert cascade.robust_correct == full.robust_correct
    assert cascade.attacks[1].attacked < full.attacks[1].attacked
    assert cascade.attacks[-1].accuracy.correct == cascade.robust.correct
    broken = torch.tensor(cascade.broken_by)
    assert int((broken == -2).sum()) == cascade.n - cascade.clean.correct
    assert int((broken == -1).sum()) == cascade.robust.correct


def test_dataset_and_tensor_inputs_agree_and_seed_reproduces(
    trained_cnn: nn.Module, mini_test: ImageDataset, batch: Batch
) -> None:
    threat = ThreatModel(eps=0.1)
    attacks = [PGD(threat=threat, steps=5)]
    a = evaluate(trained_cnn, mini_test.take(200), attacks, batch_size=50, seed=3)
    b = evaluate(trained_cnn, batch, attacks, batch_size=50, seed=3)
    c = evaluate(trained_cnn, batch, attacks, batch_size=50, seed=4)
    assert a.robust_correct == b.robust_correct
    assert a.clean_correct == b.clean_correct
    assert c.seed == 4 and b.seed == 3


def test_json_round_trip(tmp_path: Path, trained_cnn: nn.Module, batch: Batch) -> None:
    threat = ThreatModel(eps=0.2)
    result = evaluate(trained_cnn, batch, [FGSM(threat=threat)], meta={"note": "x"})
    path = result.save_json(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA
    assert set(data) >= {"threat", "clean", "robust", "attacks", "per_sample", "seconds", "n", "seed"}
    assert data["robust"]["ci_low"] <= data["robust"]["value"] <= data["robust"]["ci_high"]
    assert EvalResult.load_json(path) == result
    save_run(tmp_path / "run.json", [result, result], meta={})
    assert load_results(tmp_path / "run.json") == [result, result]


def test_mixed_threat_models_are_refused(trained_cnn: nn.Module, batch: Batch) -> None:
    with pytest.raises(ConfigError, match="same one"):
        evaluate(trained_cnn, batch, [FGSM(threat=ThreatModel(eps=0.1)), FGSM(threat=ThreatModel(eps=0.2))])
    with pytest.raises(ConfigError, match="no attacks"):
        evaluate(trained_cnn, batch, [])


def test_bad_data_is_refused(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    attacks = [FGSM(threat=ThreatModel(eps=0.1))]
    with pytest.raises(InputError, match="divide by 255"):
        evaluate(trained_cnn, (x * 255, y), attacks)
    with pytest.raises(InputError, match="labels"):
        evaluate(trained_cnn, (x, y[:-1]), attacks)
    with pytest.raises(InputError, match=r"labels span \[0, 12\]"):
        evaluate(trained_cnn, (x[:2], torch.tensor([0, 12])), attacks)
    probs = nn.Sequential(trained_cnn, nn.Softmax(dim=1))
    with pytest.raises(InputError, match="probabilities"):
        evaluate(probs, batch, attacks)


def test_interrupted_evaluation_resumes_from_its_state_file(
    tmp_path: Path, trained_cnn: nn.Module, batch: Batch
) -> None:
    threat = ThreatModel(eps=0.1)
    attacks = [PGD(threat=threat, steps=5)]
    straight = evaluate(trained_cnn, batch, attacks, batch_size=50, seed=1)

    class StopError(Exception):
        pass

    def stop_after_two(done: int, total: int) -> None:
        if done == 100:
            raise StopError

    state = tmp_path / "state.json"
    with pytest.raises(StopError):
        evaluate(
            trained_cnn, batch, attacks, batch_size=50, seed=1, state_path=state, progress=stop_after_two
        )
    assert len(json.loads(state.read_text())["batches"]) == 2
    resumed = evaluate(trained_cnn, batch, attacks, batch_size=50, seed=1, state_path=state)
    assert resumed.meta["resumed_batches"] == 2
    assert resumed.robust_correct == straight.robust_correct
    assert resumed.attacks[0].attacked == straight.attacks[0].attacked
    with pytest.raises(ConfigError, match="another evaluation"):
        evaluate(trained_cnn, batch, attacks, batch_size=50, seed=2, state_path=state)


def test_a_state_file_is_refused_for_another_model_or_other_data(
    tmp_path: Path, trained_cnn: nn.Module, batch: Batch
) -> None:
    threat = ThreatModel(eps=0.1)
    attacks = [PGD(threat=threat, steps=3)]
    x, y = batch
    state = tmp_path / "state.json"
    evaluate(trained_cnn, (x[:100], y[:100]), attacks, batch_size=50, state_path=state)
    # Other weights in the same architecture: the state's results are not this model's.
    other = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        next(other.parameters()).mul_(0.5)
    with pytest.raises(ConfigError, match="another model or other weights"):
        evaluate(other, (x[:100], y[:100]), attacks, batch_size=50, state_path=state)
    # Other images in a batch the state holds.
    with pytest.raises(ConfigError, match="other data"):
        evaluate(trained_cnn, (x[100:200], y[100:200]), attacks, batch_size=50, state_path=state)
    # Fewer samples than the state holds.
    with pytest.raises(ConfigError, match="fewer samples"):
        evaluate(trained_cnn, (x[:50], y[:50]), attacks, batch_size=50, state_path=state)
    # The same weights behind a setting that is not a tensor (a temperature): another model.
    with pytest.raises(ConfigError, match="another model or other weights"):
        evaluate(_Tempered(trained_cnn, 100.0), (x[:100], y[:100]), attacks, batch_size=50, state_path=state)
    # More samples: the state's batches are kept, the new one is attacked.
    more = evaluate(trained_cnn, (x[:150], y[:150]), attacks, batch_size=50, state_path=state)
    assert more.meta["resumed_batches"] == 2 and more.n == 150


class _Tempered(nn.Module):
    """The model's logits divided by a temperature (a plain float attribute)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x) / self.temperature
        return out


def test_non_finite_logits_under_attack_count_as_not_robust(
    trained_cnn: nn.Module, batch: Batch, nan_off_the_data: type[nn.Module]
) -> None:
    x, y = batch
    model = nan_off_the_data(trained_cnn).eval()
    # FGSM's point is off the grid for every sample, so the model answers NaN there; argmax reads a NaN row
    # as class 0: without the check every clean-correct 0 would count as robust.
    result = evaluate(model, (x, y), [FGSM(threat=ThreatModel(eps=0.1))], batch_size=100)
    zeros = (y == 0) & torch.tensor(result.clean_correct)
    assert int(zeros.sum()) > 0
    assert result.robust.correct == 0
    assert result.meta["nonfinite_logits"] == result.clean.correct
    assert "non-finite" in result.meta["nonfinite_note"]


class _Noisy(nn.Module):
    """Gaussian noise on the input from the global RNG, then the model: a randomized defense."""

    randomized = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model((x + 0.5 * torch.randn_like(x)).clamp(0, 1))
        return out


def test_a_randomized_model_is_reproduced_by_the_seed(trained_cnn: nn.Module, batch: Batch) -> None:
    model = _Noisy(trained_cnn).eval()
    attacks = [FGSM(threat=ThreatModel(eps=0.1))]
    torch.manual_seed(1)
    a = evaluate(model, batch, attacks, batch_size=100, seed=5)
    after = torch.rand(1)
    torch.manual_seed(2)
    b = evaluate(model, batch, attacks, batch_size=100, seed=5)
    c = evaluate(model, batch, attacks, batch_size=100, seed=6)
    assert a.clean_correct == b.clean_correct and a.robust_correct == b.robust_correct
    assert c.clean_correct != a.clean_correct  # the noise does come from the seed
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after)  # the caller's RNG is left as it was
    assert "randomized" in a.meta["randomness"]


def test_without_a_cascade_each_attack_reports_what_it_fooled(trained_cnn: nn.Module, batch: Batch) -> None:
    threat = ThreatModel(eps=0.15)
    attacks = [PGD(threat=threat, steps=10), PGD(threat=threat, steps=10, loss="margin")]
    result = evaluate(trained_cnn, batch, attacks, batch_size=200, cascade=False)
    for attack in result.attacks:
        assert attack.fooled == attack.attacked - attack.accuracy.correct
    assert result.attacks[1].fooled > 0  # breaks samples the first attack broke too


def test_batches_are_seeded_independently(trained_cnn: nn.Module, batch: Batch) -> None:
    # The second half evaluated alone gets the same randomness as inside the full run (batch index aside).
    threat = ThreatModel(eps=0.1)
    attacks = [PGD(threat=threat, steps=3)]
    full = evaluate(trained_cnn, batch, attacks, batch_size=100, seed=0)
    x, y = batch
    first = evaluate(trained_cnn, (x[:100], y[:100]), attacks, batch_size=100, seed=0)
    assert full.robust_correct[:100] == first.robust_correct


def test_suite_by_name_needs_a_threat(trained_cnn: nn.Module, batch: Batch) -> None:
    with pytest.raises(ConfigError, match="needs a threat model"):
        evaluate(trained_cnn, batch, "quick")
    with pytest.raises(ConfigError, match="unknown suite"):
        evaluate(trained_cnn, batch, "strongest", threat=ThreatModel())


class _MemoryLimited(nn.Module):
    """A device with room for ``limit`` samples per forward: larger batches raise torch's OutOfMemoryError
    (what CUDA raises), so the back-off can be tested on a CPU."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.largest = model, limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} samples")
        self.largest = max(self.largest, x.shape[0])
        out: torch.Tensor = self.model(x)
        return out


def test_out_of_memory_halves_the_attack_batch_and_keeps_the_result_valid(
    trained_cnn: nn.Module, batch: Batch
) -> None:
    x, y = batch
    threat = ThreatModel(norm="linf", eps=0.1)
    attacks = [PGD(threat=threat, steps=10)]
    limited = _MemoryLimited(trained_cnn, 20)
    first = evaluate(limited, (x, y), attacks, batch_size=64, seed=3)
    assert limited.largest <= 20
    assert first.meta["oom_backoffs"] >= 2 and first.meta["attack_batch_size"] == 16
    again = evaluate(_MemoryLimited(trained_cnn, 20), (x, y), attacks, batch_size=64, seed=3)
    assert again.robust_correct == first.robust_correct  # the back-off is reproducible
    whole = evaluate(trained_cnn, (x, y), attacks, batch_size=64, seed=3)
    assert "oom_backoffs" not in whole.meta and whole.meta["batch_size"] == 64
    assert first.clean_correct == whole.clean_correct
    assert first.attacks[0].violations == 0
    assert first.robust.value < first.clean.value
    assert abs(first.robust.value - whole.robust.value) <= 0.1  # other random starts, same attack
    # Only allocation failures are retried: any other error surfaces at once.
    with pytest.raises(RuntimeError, match="boom"):

        class Broken(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                raise RuntimeError("boom")

        evaluate(Broken(), (x, y), attacks, batch_size=64)


def test_auto_batch_size() -> None:
    from advrobust.evaluation.evaluate import auto_batch_size

    cuda = torch.device("cuda")
    assert auto_batch_size(torch.device("cpu"), (3, 224, 224)) == 256
    assert auto_batch_size(cuda, (1, 28, 28)) == 4096
    assert auto_batch_size(cuda, (3, 32, 32)) == 4096
    assert auto_batch_size(cuda, (3, 224, 224)) == 128
    assert auto_batch_size(cuda, (3, 1024, 1024)) == 64


def test_auto_batch_size_on_cpu_and_bad_values(trained_cnn: nn.Module, batch: Batch) -> None:
    result = evaluate(trained_cnn, batch, [FGSM(threat=ThreatModel(eps=0.1))], batch_size="auto")
    assert result.meta["batch_size"] == 256
    for bad in (0, "big", 2.5):
        with pytest.raises(ConfigError, match="batch_size must be a positive integer or 'auto'"):
            evaluate(trained_cnn, batch, [FGSM(threat=ThreatModel(eps=0.1))], batch_size=bad)  # type: ignore[arg-type]


class _Scaled(nn.Module):
    """The model's logits times 100: a saturated softmax, as defensive distillation leaves it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x) * 100
        return out


def test_a_saturated_softmax_under_cross_entropy_attacks_is_an_upper_bound(
    trained_cnn: nn.Module, batch: Batch
) -> None:
    threat = ThreatModel(eps=0.1)
    x, y = batch[0][:100], batch[1][:100]
    saturated = _Scaled(trained_cnn).eval()
    ce = evaluate(saturated, (x, y), [PGD(threat=threat, steps=5)], batch_size=100)
    assert ce.meta["upper_bound"] is True and "saturated" in ce.meta["saturation_note"]
    margin = evaluate(saturated, (x, y), [PGD(threat=threat, steps=5, loss="margin")], batch_size=100)
    assert "saturation_note" not in margin.meta
    assert margin.robust.correct < ce.robust.correct  # what the note warns of
    plain = evaluate(trained_cnn, (x, y), [PGD(threat=threat, steps=5)], batch_size=100)
    assert "saturation_note" not in plain.meta


def test_a_resumed_evaluation_keeps_its_notes(tmp_path: Path, trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch[0][:100], batch[1][:100]
    attacks = [PGD(threat=ThreatModel(eps=0.1), steps=3)]
    state = tmp_path / "state.json"
    first = evaluate(_Scaled(trained_cnn).eval(), (x, y), attacks, batch_size=50, state_path=state)
    again = evaluate(_Scaled(trained_cnn).eval(), (x, y), attacks, batch_size=50, state_path=state)
    assert again.meta["resumed_batches"] == 2 and again.robust_correct == first.robust_correct
    assert again.meta["saturation_note"] == first.meta["saturation_note"]
