"""The train and eval workflows behind the CLI, callable from Python with the same settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrobust import distributed
from advrobust.accel import accelerate
from advrobust.attacks import Attack, attack_class, create_attack
from advrobust.config import (
    AuditSettings,
    CertifySettings,
    DataSettings,
    DefendSettings,
    EvalSettings,
    TrainSettings,
)
from advrobust.contract import Access
from advrobust.data import ImageDataset, load_dataset
from advrobust.defenses import (
    Certification,
    InputTransformDefense,
    SmoothedClassifier,
    certify_dataset,
    parse_transform,
    save_defense,
)
from advrobust.errors import ConfigError, DataError
from advrobust.evaluation import EvalResult, evaluate, save_run
from advrobust.evaluation.audit import AuditReport, audit
from advrobust.evaluation.curves import RobustnessCurve, robustness_curve
from advrobust.evaluation.evaluate import auto_batch_size, batch_seed, seeded_randomness
from advrobust.evaluation.suites import build_suite
from advrobust.fileio import atomic_write_json
from advrobust.models import ModelCard, create_model, load_model, read_card, save_model
from advrobust.models.external import load_external, model_kind, restrict_access
from advrobust.models.registry import model_options
from advrobust.provenance import environment
from advrobust.threat import ThreatModel
from advrobust.training import (
    CHECKPOINT_NAME,
    Callback,
    Objective,
    StepInfo,
    TrainConfig,
    TrainResult,
    accuracy,
    create_objective,
    objective_options,
    train,
)

HISTORY_NAME = "history.json"


@dataclass
class TrainOutcome:
    """A trained model, its card (saved in ``path``) and its training history."""

    model: nn.Module
    card: ModelCard
    result: TrainResult
    path: Path
    teacher: TrainOutcome | None = None  # the teacher trained first (distillation without --teacher)


#: Printed and recorded with every evaluation run under --amp.
AMP_NOTE = (
    "--amp ran the model in bf16 for the attacks and for the verdict: bf16's rounded gradients can miss "
    "adversarial examples (on one GPU, bf16 PGD-40 left 41.9% of a random-weight ResNet's inputs robust "
    "where float32 left 19.9%; random weights' tiny logit margins exaggerate it, benchmarks/RESULTS.md), so "
    "report robust accuracy from a float32 run"
)


def load_data(settings: DataSettings, split: str) -> ImageDataset:
    """The data set named in ``settings`` (a registered name or a path to .npz / an image folder)."""
    return load_dataset(
        settings.data,
        split=split,  # type: ignore[arg-type]
        root=settings.root,
        download=settings.download,
        mirror=settings.mirror,
    )


def channel_stats(data: ImageDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the images in [0, 1], computed in float64."""
    images = data.images.to(torch.float64).div_(255)
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_objective(settings: TrainSettings, *, teacher: nn.Module | None = None) -> Objective:
    """The objective ``settings.defense`` with the options given; an option it does not have is an error.

    ``teacher`` is the model loaded from ``settings.teacher`` (the distillation defenses).
    """
    options: dict[str, Any] = {
        "steps": settings.steps,
        "step_size": settings.step_size,
        "beta": settings.beta,
        "replays": settings.replays,
        "clean_weight": settings.clean_weight,
        "attack_mode": settings.attack_mode,
        "guard": settings.guard,
        "guard_patience": settings.guard_patience,
        "prior_start": settings.prior_start,
        "prior_reg": settings.prior_reg,
        "sigma": settings.sigma,
        "temperature": settings.temperature,
        "alpha": settings.alpha,
        "teacher": teacher,
    }
    given = {k: v for k, v in options.items() if v is not None}
    known = set(objective_options(settings.defense))
    if settings.norm is not None or settings.eps is not None:
        if "threat" not in known:
            raise ConfigError(
                f"--norm/--eps apply to adversarial defenses, not {settings.defense!r}: drop them or pick "
                "e.g. --defense fast-at"
            )
        given["threat"] = ThreatModel(
            norm=settings.norm or "linf", eps=settings.eps if settings.eps is not None else 0.3
        )
    unused = sorted(set(given) - known)
    if unused:
        flags = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise ConfigError(
            f"{flags} does not apply to --defense {settings.defense}: its options are "
            f"{', '.join(sorted(known - {'threat'})) or 'none'}"
        )
    return create_objective(settings.defense, **given)


def train_run(
    settings: TrainSettings,
    *,
    progress: Callable[[StepInfo], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainOutcome:
    """Train ``settings.model`` on ``settings.data`` with ``settings.defense``; save a run directory.

    ``callbacks`` go to ``train`` after the objective's own.

    The run directory ``settings.out`` gets ``model.safetensors`` and ``card.json`` (the model), plus
    ``checkpoint.pt`` (to resume) and ``history.json`` (per-epoch metrics). Under torchrun the processes
    train one model with DistributedDataParallel (each takes its shard of every epoch) and rank 0 writes.
    """
    device = distributed.local_device(_device(settings.device))
    group = distributed.init_from_env(device)
    data = load_data(settings, "train")
    try:
        val: ImageDataset | None = load_data(settings, "test")
    except DataError:
        val = None
    c, h, w = data.input_shape
    mean, std = channel_stats(data) if settings.normalize else (None, None)
    kwargs: dict[str, Any] = {"input_size": [h, w]} if "input_size" in model_options(settings.model) else {}
    teacher_run = _train_teacher(settings, progress) if _trains_teacher(settings) else None
    if teacher_run is not None:
        settings = settings.model_copy(
            update={"teacher": str(teacher_run.path), "resume": _resumes(settings)}
        )
    teacher = _load_teacher(settings.teacher, data, device) if settings.teacher is not None else None
    torch.manual_seed(settings.seed)
    model = create_model(
        settings.model, num_classes=data.num_classes, in_channels=c, mean=mean, std=std, **kwargs
    ).to(device)
    objective = build_objective(settings, teacher=teacher)
    config = TrainConfig(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        optimizer=settings.optimizer,
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
        schedule=settings.schedule,
        seed=settings.seed,
        ema_decay=settings.ema_decay,
        robust_val=settings.robust_val,
        robust_val_attack=settings.robust_val_attack,
        robust_val_steps=settings.robust_val_steps,
        eps_warmup=settings.eps_warmup,
    )
    out = Path(settings.out)
    result = train(
        model,
        data,
        objective=objective,
        config=config,
        out_dir=out,
        resume=settings.resume,
        val_data=val,
        device=device,
        progress=progress,
        callbacks=callbacks,
    )
    metrics: dict[str, Any] = {"train_accuracy": result.history[-1]["train_accuracy"]}
    if result.best_epoch is not None:
        chosen = result.history[result.best_epoch - 1]
        metrics["holdout_accuracy"] = chosen["holdout_accuracy"]
        metrics["holdout_robust_accuracy"] = chosen["holdout_robust_accuracy"]
    if val is not None:
        metrics["clean_accuracy"] = accuracy(model, val, device=device)
        metrics["clean_accuracy_split"] = "test"
    teacher_record: dict[str, Any] = {}
    if settings.teacher is not None:
        teacher_record = {"teacher": _teacher_record(settings.teacher, trained_here=teacher_run is not None)}
    card = ModelCard.from_model(
        model,
        input_shape=data.input_shape,
        dataset=data.name,
        classes=data.classes,
        training={
            "objective": {"name": objective.name, **objective.params()},
            "config": dataclasses.asdict(config),
            "seconds": result.seconds,
            "samples": len(data),
            "holdout_samples": result.holdout_samples,
            "data_source": data.source,
            # Which weights were saved: "best" (of best_epoch, by held-out robust accuracy), "ema" or "last".
            "weights": result.weights,
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "warnings": result.warnings,
            **teacher_record,
        },
        metrics=metrics,
    )
    if group.is_main:
        save_model(model, out, card)
        atomic_write_json(
            out / HISTORY_NAME,
            {"environment": environment(), "processes": group.world_size, **result.to_dict()},
        )
    distributed.barrier()
    return TrainOutcome(model=model, card=read_card(out), result=result, path=out, teacher=teacher_run)


def _trains_teacher(settings: TrainSettings) -> bool:
    """Defensive distillation without --teacher trains its teacher first, in the same command."""
    return settings.defense == "distillation" and settings.teacher is None


def _resumes(settings: TrainSettings) -> bool:
    # A two-stage run resumes each stage that has a checkpoint: it may have stopped in either.
    return settings.resume and (Path(settings.out) / CHECKPOINT_NAME).is_file()


def _train_teacher(settings: TrainSettings, progress: Callable[[StepInfo], None] | None) -> TrainOutcome:
    """Defensive distillation's first stage: ``settings.model`` trained with temperature-ce at the same
    temperature, epochs and seed, saved as the run directory ``settings.out/teacher``."""
    stage = settings.model_copy(
        update={"defense": "temperature-ce", "out": str(Path(settings.out) / "teacher"), "alpha": None}
    )
    return train_run(stage.model_copy(update={"resume": _resumes(stage)}), progress=progress)


def _load_teacher(path: str, data: ImageDataset, device: torch.device) -> nn.Module:
    """The teacher saved in the run directory ``path``, checked against the data the student trains on."""
    card = read_card(path)
    if tuple(card.input_shape) != tuple(data.input_shape) or card.num_classes != data.num_classes:
        raise ConfigError(
            f"the teacher {path} takes {tuple(card.input_shape)} inputs with {card.num_classes} classes but "
            f"{data.name} has {data.input_shape} and {data.num_classes}: distill on the teacher's data"
        )
    teacher = load_model(path, device=device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _teacher_record(path: str, *, trained_here: bool) -> dict[str, Any]:
    """What the student's card says of its teacher: where it is, the checksum of its weights, how it trained."""
    card = read_card(path)
    objective = card.training.get("objective")
    return {
        "path": path,
        "weights_sha256": card.weights_sha256,
        "arch": card.arch,
        "objective": objective if isinstance(objective, dict) else None,
        "trained_here": trained_here,
        "seconds": card.training.get("seconds"),  # part of what the distilled model cost
    }


#: The attack a black-box evaluation runs when none is named.
BLACK_BOX_ATTACKS = {"score": "square", "decision": "hopskipjump"}


def build_attacks(
    settings: EvalSettings,
    threat: ThreatModel,
    model: nn.Module | None = None,
    *,
    access: Access = "white-box",
) -> list[Attack]:
    """The attacks named in ``settings``, each given the options it has; an option no attack has is an error.

    ``model`` is what the ``adaptive`` suite adapts to. Without named attacks, black-box ``access`` runs
    Square (score) or HopSkipJump (decision).
    """
    options = {
        "steps": settings.steps,
        "step_size": settings.step_size,
        "restarts": settings.restarts,
        "loss": settings.loss,
        "queries": settings.queries,
    }
    given = {k for k, v in options.items() if v is not None}
    used: set[str] = set()
    attacks = []
    if settings.suite is not None:
        if access != "white-box":
            raise ConfigError(
                f"--suite {settings.suite} needs white-box access, not {access}: drop it to run "
                f"{BLACK_BOX_ATTACKS[access]}, or name gradient-free attacks with --attack"
            )
        if given:
            flags = ", ".join("--" + u.replace("_", "-") for u in sorted(given))
            raise ConfigError(
                f"{flags} cannot change a suite's fixed recipe: drop it, or name attacks with --attack"
            )
        return build_suite(settings.suite, threat, model=model)
    names = settings.attack_names
    if settings.attack is None and access != "white-box":
        names = [BLACK_BOX_ATTACKS[access]]
    for name in names:
        fields = {f.name for f in dataclasses.fields(attack_class(name))}
        mine = {k: v for k, v in options.items() if k in fields and v is not None}
        used |= set(mine)
        attacks.append(create_attack(name, threat=threat, **mine))
    unused = sorted(given - used)
    if unused:
        flags = ", ".join("--" + u.replace("_", "-") for u in unused)
        raise ConfigError(
            f"{flags} applies to none of the attacks {settings.attack}: drop it or add an attack that has it"
        )
    return attacks


@dataclass
class EvalOutcome:
    """One evaluation per eps, the robustness curve when asked for, and the provenance written with them."""

    results: list[EvalResult]
    curve: RobustnessCurve | None
    meta: dict[str, Any]


def load_model_and_data(
    settings: EvalSettings | AuditSettings,
) -> tuple[nn.Module, ImageDataset, dict[str, Any]]:
    """The saved model and the matching data (first ``n`` samples), with their provenance.

    A ``settings.model`` that is not a run directory (``pkg.module:factory``, ``timm:NAME``, ``.onnx``,
    ``.pt2``, ``http(s)://``) goes through ``load_external``; ``meta["access"]`` is the access granted.
    """
    device = _device(settings.device)
    if model_kind(settings.model) != "run":
        return _load_external_and_data(settings, device)
    extra = [
        flag
        for flag, value in (
            ("--weights", settings.weights),
            ("--mean/--std", settings.mean or settings.std),
            ("--input-shape", settings.input_shape),
            ("--num-classes", settings.num_classes),
        )
        if value
    ]
    if extra:
        raise ConfigError(
            f"{', '.join(extra)} describe models from outside advrobust; {settings.model} is a run directory "
            "whose card says all that: drop them"
        )
    access: Access = settings.access or "white-box"
    card = read_card(settings.model)
    model = restrict_access(load_model(settings.model, device=device), access)
    data = load_data(settings, settings.split)
    if settings.n is not None:
        data = data.take(settings.n)
    if tuple(data.input_shape) != tuple(card.input_shape):
        raise ConfigError(
            f"the model takes inputs of shape {tuple(card.input_shape)} but {data.name} has {data.input_shape}: "
            "evaluate on the data set the model was trained for"
        )
    if data.num_classes != card.num_classes:
        raise ConfigError(
            f"the model has {card.num_classes} classes but {data.name} has {data.num_classes}: use matching data"
        )
    meta = {
        "processes": distributed.info().world_size,
        "model": {"path": str(settings.model), "arch": card.arch, "weights_sha256": card.weights_sha256},
        "access": access,
        "data": {"name": data.name, "split": settings.split, "n": len(data), "source": data.source},
        "environment": environment(),
    }
    return model, data, meta


def _load_external_and_data(
    settings: EvalSettings | AuditSettings, device: torch.device
) -> tuple[nn.Module, ImageDataset, dict[str, Any]]:
    data = load_data(settings, settings.split)
    if settings.n is not None:
        data = data.take(settings.n)
    remote = model_kind(settings.model) == "remote"
    external = load_external(
        settings.model,
        access=settings.access,
        weights=settings.weights,
        mean=settings.mean,
        std=settings.std,
        # A remote endpoint says what it takes; the shape of the data would hide a mismatch.
        input_shape=settings.input_shape or (None if remote else data.input_shape),
        num_classes=settings.num_classes,
        trust_pickle=settings.trust_pickle,
        probe=data.take(min(64, len(data))).images.float().div_(255),
        remote_options={
            "query_log": settings.query_log,
            "timeout": settings.timeout,
            "retries": settings.retries,
            "rate_limit": settings.rate_limit,
        },
    )
    if external.input_shape is not None and tuple(external.input_shape) != tuple(data.input_shape):
        raise ConfigError(
            f"the model takes inputs of shape {tuple(external.input_shape)} but {data.name} has "
            f"{data.input_shape}: evaluate on the data set the model was made for"
        )
    if external.num_classes is not None and external.num_classes != data.num_classes:
        raise ConfigError(
            f"the model has {external.num_classes} classes but {data.name} has {data.num_classes}: "
            "use matching data"
        )
    meta = {
        "processes": distributed.info().world_size,
        "model": external.info,
        "access": external.access,
        "data": {"name": data.name, "split": settings.split, "n": len(data), "source": data.source},
        "environment": environment(),
    }
    return external.model.to(device), data, meta


def _tensors(data: ImageDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return data.images.to(device).float().div_(255), data.labels.to(device)


def _state_path(state: str | None, eps: float, count: int) -> Path | None:
    """One resumable state file per eps: the given name itself when there is only one eps."""
    if state is None:
        return None
    path = Path(state)
    return path if count == 1 else path.with_name(f"{path.stem}-eps{eps:g}{path.suffix}")


def eval_run(settings: EvalSettings, *, progress: Callable[[int, int], None] | None = None) -> EvalOutcome:
    """Evaluate a saved model at every eps in ``settings`` (and its curve); write ``settings.json_path``.

    Under torchrun the samples are sharded across the processes and gathered; only rank 0 writes.
    """
    device = distributed.local_device(_device(settings.device))
    group = distributed.init_from_env(device)
    model, data, meta = load_model_and_data(settings)
    access: Access = meta["access"]
    if settings.amp or settings.channels_last or settings.compile:
        if access != "white-box":
            raise ConfigError("--amp, --channels-last and --compile apply to white-box models: drop them")
        model = accelerate(
            model, device, amp=settings.amp, channels_last=settings.channels_last, compile=settings.compile
        )
        meta = {
            **meta,
            "acceleration": {
                "amp": settings.amp,
                "channels_last": settings.channels_last,
                "compile": settings.compile,
            },
        }
        if settings.amp:
            meta["amp_note"] = AMP_NOTE
    if settings.curve and access != "white-box":
        raise ConfigError(
            f"--curve runs gradient attacks, which {access} access does not allow: drop --curve"
        )
    results = []
    for eps in settings.eps:
        threat = ThreatModel(norm=settings.norm, eps=eps)
        attacks = build_attacks(settings, threat, model=model, access=access)
        results.append(
            evaluate(
                model,
                data,
                attacks,
                batch_size=settings.batch_size,
                device=device,
                seed=settings.seed,
                cascade=settings.cascade,
                progress=progress,
                meta=meta,
                state_path=_state_path(settings.state, eps, len(settings.eps)),
                access=access,
            )
        )
    curve = None
    if settings.curve:
        x, y = _tensors(data, device)
        # A randomized model's draws during the curve come from the seed too (as in evaluate's batches).
        with seeded_randomness(model, device, batch_seed(settings.seed, -2, -2)):
            curve = robustness_curve(
                model,
                x,
                y,
                norm=settings.norm,
                eps_max=max(settings.eps),
                points=settings.curve_points,
                batch_size=(
                    auto_batch_size(device, data.input_shape)
                    if settings.batch_size == "auto"
                    else settings.batch_size
                ),
                seed=settings.seed,
            )
        # The evaluations above ran on the same samples: what they broke at an eps is broken there.
        label = settings.suite if settings.suite is not None else "+".join(settings.attack_names)
        for result in results:
            fooled = [c and not r for c, r in zip(result.clean_correct, result.robust_correct, strict=True)]
            curve = curve.with_fixed_eps(float(result.threat["eps"]), fooled, label)
        # And the other way: what the curve's attacks broke within an evaluated eps is broken there too.
        results = [_with_curve(result, curve) for result in results]
    if settings.json_path is not None and group.is_main:
        extra = {"curve": curve.to_dict()} if curve is not None else {}
        # The labels let a report break robust accuracy down per class without reloading the data.
        data_meta = {**meta["data"], "labels": data.labels.tolist()}
        save_run(settings.json_path, results, meta={**meta, **extra, "data": data_meta})
    return EvalOutcome(results, curve, meta)


CURVE_BROKEN = -3  # broken_by for a sample that only the robustness curve's attacks broke at this eps


def _with_curve(result: EvalResult, curve: RobustnessCurve) -> EvalResult:
    """``result`` with the samples that the curve's attacks fooled within its eps counted as not robust
    (``broken_by`` = ``CURVE_BROKEN``; ``meta.curve_broken`` counts them), so that robust accuracy is the
    worst case over every attack that ran on these samples."""
    eps = float(result.threat["eps"])
    # Distance 0 is the curve's own clean check (one draw of a randomized model), not an attack's find.
    extra = [r and 0 < d <= eps for r, d in zip(result.robust_correct, curve.distances, strict=True)]
    count = sum(extra)
    if not count:
        return result
    robust = [r and not e for r, e in zip(result.robust_correct, extra, strict=True)]
    broken = [CURVE_BROKEN if e else b for b, e in zip(result.broken_by, extra, strict=True)]
    note = (
        f"the robustness curve's attacks ({', '.join(curve.sources)}) broke {count} more sample(s) within eps "
        f"{eps:g}: they count as not robust here"
    )
    return dataclasses.replace(
        result,
        robust=dataclasses.replace(result.robust, correct=sum(robust)),
        robust_correct=robust,
        broken_by=broken,
        meta={**result.meta, "curve_broken": count, "curve_note": note},
    )


def audit_run(settings: AuditSettings) -> AuditReport:
    """Run the gradient-masking audit on a saved model; write ``settings.json_path`` when given."""
    device = _device(settings.device)
    model, data, meta = load_model_and_data(settings)
    if meta["access"] != "white-box":
        raise ConfigError(
            f"the audit checks gradients, which {meta['access']} access does not give: audit a white-box copy of "
            "the model; a black-box number from advrobust eval is only an upper bound on robust accuracy"
        )
    x, y = _tensors(data, device)
    report = audit(
        model,
        x,
        y,
        ThreatModel(norm=settings.norm, eps=settings.eps),
        steps=settings.steps,
        seed=settings.seed,
        batch_size=settings.batch_size,
        square_queries=settings.square_queries,
    )
    if settings.json_path is not None:
        atomic_write_json(settings.json_path, {**report.to_dict(), "meta": meta})
    return report


@dataclass
class DefendOutcome:
    """A saved model wrapped in input transformations, and the run directory it was saved to."""

    model: InputTransformDefense
    card: ModelCard
    path: Path


# advrobust.defenses is imported above for this too: it registers the gaussian-augment training objective.
def defend_run(settings: DefendSettings) -> DefendOutcome:
    """Wrap the saved model ``settings.model`` in ``settings.transform`` (specs such as ``jpeg:75``) and
    save it to ``settings.out``; a model that is already defended keeps its transforms, the new ones after.
    """
    source = load_model(settings.model)
    card = read_card(settings.model)
    transforms = [parse_transform(spec) for spec in settings.transform]
    if isinstance(source, InputTransformDefense):
        transforms = [*source.chain(), *transforms]
        source = source.model
    defended = InputTransformDefense(source, transforms).eval()
    training = {k: v for k, v in card.training.items() if k != "defense"}
    training["defended_from"] = {"path": str(settings.model), "weights_sha256": card.weights_sha256}
    # The source's accuracies were measured without the transforms: they do not describe this model.
    base = dataclasses.replace(card, training=training, metrics={})
    out = save_defense(defended, settings.out, base)
    return DefendOutcome(model=defended, card=read_card(out), path=out)


def _card_sigma(card: ModelCard) -> float | None:
    objective = card.training.get("objective")
    if isinstance(objective, dict) and objective.get("name") == "gaussian-augment":
        sigma = objective.get("sigma")
        return float(sigma) if isinstance(sigma, (int, float)) else None
    return None


def certify_run(
    settings: CertifySettings, *, progress: Callable[[int, int], None] | None = None
) -> tuple[Certification, dict[str, Any]]:
    """Certify the first ``settings.images`` images with randomized smoothing (Cohen et al., 2019).

    ``sigma`` defaults to the one the model was trained with (gaussian-augment). Writes
    ``settings.json_path`` when given. Returns the certificates and their provenance.
    """
    device = _device(settings.device)
    card = read_card(settings.model)
    sigma = settings.sigma if settings.sigma is not None else _card_sigma(card)
    if sigma is None:
        raise ConfigError(
            f"{settings.model} was not trained with gaussian-augment: give the noise level with --sigma, "
            "e.g. --sigma 0.25"
        )
    model = load_model(settings.model, device=device)
    data = load_data(settings, settings.split).take(settings.images)
    if tuple(data.input_shape) != tuple(card.input_shape) or data.num_classes != card.num_classes:
        raise ConfigError(
            f"the model takes {tuple(card.input_shape)} inputs with {card.num_classes} classes but "
            f"{data.name} has {data.input_shape} and {data.num_classes}: use the data the model was trained for"
        )
    x, y = _tensors(data, device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    certification = certify_dataset(
        SmoothedClassifier(model, sigma=sigma),
        x,
        y,
        n0=settings.n0,
        n=settings.n,
        alpha=settings.alpha,
        radii=settings.radii,
        batch_size=settings.batch_size,
        generator=generator,
        progress=progress,
    )
    meta = {
        "processes": distributed.info().world_size,
        "model": {"path": str(settings.model), "arch": card.arch, "weights_sha256": card.weights_sha256},
        "data": {"name": data.name, "split": settings.split, "n": len(data), "source": data.source},
        "seed": settings.seed,
        "environment": environment(),
    }
    if settings.json_path is not None:
        atomic_write_json(settings.json_path, {**certification.to_dict(), "meta": meta})
    return certification, meta
