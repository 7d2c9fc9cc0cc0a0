"""The training loop shared by every objective: seeded, checkpointed every epoch, resumable exactly.

Beyond the loop: replays (several optimizer steps per batch, for Free-AT), callbacks that may stop the run
(Fast-AT's overfitting guard), an optional EMA of the weights, bf16 autocast and channels_last on CUDA, and,
for adversarial objectives, robust validation on samples held out of the training data with selection of
the most robust epoch (robust overfitting, Rice, Wong & Kolter, 2020, arXiv:2002.11569).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from advrobust import distributed
from advrobust.contract import eval_mode
from advrobust.cpu_grad import fast_weight_gradients
from advrobust.data import BatchLoader, ImageDataset
from advrobust.errors import ConfigError
from advrobust.threat import ThreatModel
from advrobust.training.callbacks import Callback, Stop, TrainContext
from advrobust.training.checkpoint import load_checkpoint, save_checkpoint
from advrobust.training.ema import EMA
from advrobust.training.objectives import (
    Objective,
    Standard,
    StatefulObjective,
    objective_callbacks,
    objective_replays,
    objective_threat,
)
from advrobust.training.validation import (
    ValAttack,
    accuracy,
    check_val_attack,
    holdout_split,
    robust_accuracy,
    validation_label,
)

CHECKPOINT_NAME = "checkpoint.pt"
#: TrainConfig options whose default changed, with the value a checkpoint written before they existed used.
LEGACY_DEFAULTS: dict[str, Any] = {"robust_val_attack": "pgd", "robust_val_steps": 10}
#: TrainConfig options that matter only when the run validates on held-out samples.
VALIDATION_OPTIONS = ("robust_val_attack", "robust_val_steps")
PROGRESS_EVERY = 10
logger = logging.getLogger("advrobust.training")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings. Defaults suit the small MNIST CNNs (Adam, lr 1e-3).

    ``schedule="cyclic"`` is the triangle of Wong et al. (0 -> lr at 40% of the steps -> 0).
    ``ema_decay`` keeps an EMA of the weights (evaluated and delivered instead of the raw weights).
    ``robust_val`` samples (None: 500, at most a tenth of the data, for adversarial objectives; 0 for clean
    ones) are held out of the training data and attacked after each epoch with ``robust_val_attack``
    ("apgd": APGD-CE; "pgd": PGD) of ``robust_val_steps`` steps; ``select="best"`` then delivers the
    epoch with the highest robust (then clean) held-out accuracy. APGD is the default because fixed-step PGD
    can be fooled by the gradient masking of single-step training into choosing a weak epoch.
    ``amp`` (bf16 autocast) and ``channels_last`` apply on CUDA only. ``eps_warmup`` (epochs, may be
    fractional) ramps an adversarial objective's eps linearly from 0 to its full value, step by step, over
    that many epochs (0: off); pure PGD-AT of a small model from scratch may not train without it.
    """

    epochs: int = 5
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "onecycle", "cyclic"] = "constant"
    seed: int = 0
    ema_decay: float | None = None
    robust_val: int | None = None
    robust_val_attack: ValAttack = "apgd"
    robust_val_steps: int = 20
    select: Literal["best", "last"] = "best"
    amp: bool = True
    channels_last: bool = True
    eps_warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}: use sgd or adam")
        if self.schedule not in ("constant", "cosine", "onecycle", "cyclic"):
            raise ConfigError(f"unknown schedule {self.schedule!r}: use constant, cosine, onecycle or cyclic")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must lie in (0, 1), got {self.ema_decay}: try 0.999, or None")
        if self.robust_val is not None and self.robust_val < 0:
            raise ConfigError(f"robust_val must be >= 0 (0 turns it off), got {self.robust_val}")
        check_val_attack(self.robust_val_attack)
        if self.robust_val_steps < 1:
            raise ConfigError(f"robust_val_steps must be >= 1, got {self.robust_val_steps}")
        if not (self.eps_warmup >= 0 and math.isfinite(self.eps_warmup)):
            raise ConfigError(f"eps_warmup must be a number of epochs >= 0, got {self.eps_warmup}")
        if self.select not in ("best", "last"):
            raise ConfigError(f"select must be 'best' or 'last', got {self.select!r}")


@dataclass(frozen=True)
class StepInfo:
    """What a progress callback receives every few batches.

    ``accuracy`` is the running train accuracy on the points the objective trained on; for adversarial
    objectives that is ``robust_accuracy`` (under the training attack), and ``clean_accuracy`` is measured
    on the clean inputs of every tenth batch. ``samples_per_second`` counts training images (not replays).
    """

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    accuracy: float
    samples_per_second: float
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None


@dataclass
class TrainResult:
    """Per-epoch history and totals, which weights the model holds, and why training stopped early, if it did.

    ``weights``: "last" (the raw weights after the last epoch), "ema", or "best" (those of ``best_epoch``,
    the epoch with the highest accuracy under the robust-validation attack on ``holdout_samples`` held out of
    the training data). ``stopped``: None, or the epoch, step and reason
    a callback gave (e.g. the overfitting guard), with the epoch and step of the weights it restored.
    ``warnings``: what the user must know about the delivered model, e.g. that it never became robust.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None
    weights: Literal["last", "ema", "best"] = "last"
    best_epoch: int | None = None
    stopped: dict[str, Any] | None = None
    holdout_samples: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "seconds": self.seconds,
            "resumed_from": self.resumed_from,
            "weights": self.weights,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped,
            "holdout_samples": self.holdout_samples,
            "warnings": self.warnings,
        }


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether PyTorch's fused (one-kernel) optimizer step takes these parameters: dense floating-point
    tensors on one CPU or CUDA device type. On CPU it is several times faster than the per-tensor loop
    (Adam on preact-resnet18, one thread: ~6 ms vs ~43 ms a step; ``benchmarks/optimizer_step.py``)."""
    kinds = {p.device.type for p in params}
    return (
        len(kinds) == 1
        and kinds <= {"cpu", "cuda"}
        and all(p.is_floating_point() and not p.is_sparse for p in params)
    )


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = _fusable(params)
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _cyclic(total: int) -> Callable[[int], float]:
    # Wong et al.'s schedule, evaluated at the end of each step as in their code: the last step has lr 0.
    def factor(step: int) -> float:
        t = min(1.0, (step + 1) / total)
        return t / 0.4 if t <= 0.4 else (1.0 - t) / 0.6

    return factor


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = config.epochs * steps
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "cyclic":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, _cyclic(total))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@contextlib.contextmanager
def _autocast(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yield


def train(
    model: nn.Module,
    data: ImageDataset,
    *,
    objective: Objective | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    val_data: ImageDataset | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[StepInfo], None] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train ``model`` in place on ``data`` with ``objective``; checkpoint to ``out_dir`` after every epoch.

    With ``resume`` the run continues from ``out_dir/checkpoint.pt`` (model, optimizer, schedule, RNG, EMA,
    objective and callback state, best weights, history), so an interrupted run ends with the same weights as
    an uninterrupted one. The model ends in eval mode holding the weights ``result.weights`` names.
    ``callbacks`` run after the objective's own (see ``Callback``). A run a callback stopped stays stopped.
    Shape: data images (N, C, H, W) uint8, converted to [0, 1] per batch.
    """
    objective = objective or Standard()
    config = config or TrainConfig()
    device = (
        torch.device(device)
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    run = _Run.start(model, data, objective, config, device, [*objective_callbacks(objective), *callbacks])
    record = {
        "train": dataclasses.asdict(config),
        "objective": {"name": objective.name, **objective.params()},
    }
    checkpoint_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    start_epoch = 0
    if resume:
        if checkpoint_path is None:
            raise ConfigError("resume needs the run directory (out_dir) that holds checkpoint.pt")
        validates = run.holdout is not None
        state = _matching_checkpoint(
            checkpoint_path, record, len(run.hooks), validates=validates, defaults=_option_defaults(objective)
        )
        run.load_state_dict(state)
        start_epoch = run.result.resumed_from = int(state["epoch"])
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if run.result.stopped is not None:
            break
        entry = run.train_epoch(epoch, progress)
        run.end_epoch(epoch, entry, val_data)
        if checkpoint_path is not None:
            state = run.state_dict()  # every rank takes part (it gathers the per-rank generators)
            if distributed.info().is_main:
                save_checkpoint(checkpoint_path, {"epoch": epoch, **state, "config": record})
            distributed.barrier()
    run.deliver()
    model.eval()
    if run.holdout is not None:
        warning = not_robust_warning(
            run.result.history,
            run.holdout.labels,
            run.threat,
            validation_label(config.robust_val_attack, config.robust_val_steps),
            delivered=run.result.best_epoch,
        )
        if warning is not None:
            run.result.warnings = [warning]  # the CLI prints it after the epoch table; the card records it
    return run.result


def not_robust_warning(
    history: Sequence[dict[str, float]],
    labels: Tensor,
    threat: ThreatModel | None,
    attack: str,
    *,
    delivered: int | None = None,
) -> str | None:
    """A warning when the delivered weights' held-out robust accuracy does not beat always guessing the
    held-out images' most common class (``labels``: theirs), else None. ``attack`` names the validation
    attack in the message (e.g. "APGD-CE-20").

    ``delivered``: the epoch whose weights the model holds (``best_epoch``); None means the last epoch
    validated (``select="last"``, an EMA, or weights a guard restored after its last good check). Adversarial
    training that never takes hold (single-step training overfitting from the first epoch, an eps too large
    for the data or the model), or whose last weights collapsed, otherwise ends without a word.
    """
    scored = [
        (int(h["epoch"]), h["holdout_robust_accuracy"]) for h in history if "holdout_robust_accuracy" in h
    ]
    if threat is None or not scored or labels.numel() == 0:
        return None
    guess = float(labels.bincount().max()) / labels.numel()
    epoch, score = next(((e, s) for e, s in scored if e == delivered), scored[-1])
    if score > guess:
        return None
    best_epoch, best = max(scored, key=lambda item: item[1])
    where = (
        f"never rose above {best:.1%}"
        if best <= guess
        else f"is {score:.1%} for the weights delivered (epoch {epoch}; epoch {best_epoch} scored {best:.1%}: "
        "select the best epoch, the default, to keep those)"
    )
    return (
        f"the model is not robust: its accuracy on the held-out images under {attack} at {threat.norm} eps "
        f"{threat.eps:g} {where}, where always answering their most common class scores {guess:.1%}. Train "
        "with a smaller eps or step size, ramp eps up (--eps-warmup), or use pgd-at: single-step training "
        "(fast-at, free-at) can overfit catastrophically"
    )


def _check_warmup(objective: Objective, threat: ThreatModel | None) -> None:
    if threat is None:
        raise ConfigError(
            f"eps_warmup ramps the attack's eps, but {objective.name} trains on clean inputs: drop it"
        )
    if not dataclasses.is_dataclass(objective):
        raise ConfigError(
            f"eps_warmup ramps objectives by copying them with a smaller threat, and {objective.name} is not a "
            "dataclass: make it a frozen dataclass with a `threat` field, or drop eps_warmup"
        )


def _option_defaults(objective: Objective) -> dict[str, Any]:
    """The objective's options that have a plain default value (a dataclass's), as params() writes them."""
    if not dataclasses.is_dataclass(objective):
        return {}
    return {
        f.name: f.default
        for f in dataclasses.fields(objective)
        if f.init and f.default is not dataclasses.MISSING and isinstance(f.default, (bool, int, float, str))
    }


def _matching_checkpoint(
    path: Path,
    record: dict[str, Any],
    hooks: int,
    *,
    validates: bool = True,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint at ``path``, refused unless it was made with the same settings and callbacks.

    Without robust validation (``validates=False``) its attack and steps are not compared.
    """
    state = load_checkpoint(path)
    saved = dict(state["config"])
    record = dict(record)
    if isinstance(saved.get("train"), dict):
        # Options added after the checkpoint was written take their defaults (which is how it was trained),
        # except where the default changed since (LEGACY_DEFAULTS: how such checkpoints were trained).
        saved["train"] = {**dataclasses.asdict(TrainConfig()), **LEGACY_DEFAULTS, **saved["train"]}
        if not validates:
            saved["train"] = _without(saved["train"], VALIDATION_OPTIONS)
            record["train"] = _without(record["train"], VALIDATION_OPTIONS)
    if isinstance(saved.get("objective"), dict):
        # The objective's options added after the checkpoint was written take their defaults (``defaults``:
        # its options with plain default values), which is how it was trained.
        saved["objective"] = {**(defaults or {}), **saved["objective"]}
    mismatched = sorted(k for k in record if _without_epochs(saved.get(k)) != _without_epochs(record[k]))
    if mismatched:
        named = [_differing(key, saved.get(key), record[key]) for key in mismatched]
        saved_train, train_now = saved.get("train"), record.get("train")
        hint = ""
        if (
            isinstance(saved_train, dict)
            and isinstance(train_now, dict)
            and any(saved_train.get(option) != train_now.get(option) for option in VALIDATION_OPTIONS)
        ):
            hint = (
                " (a run checkpointed before robust validation defaulted to APGD-CE-20 chose its epochs with "
                "PGD-10: resume it with --robust-val-attack pgd --robust-val-steps 10)"
            )
        raise ConfigError(
            f"the checkpoint in {path.parent} was made with other settings ({'; '.join(named)}){hint}: "
            "resume with the same options, or start a new run in another directory"
        )
    if len(state["callbacks"]) != hooks:
        raise ConfigError(
            f"the checkpoint in {path.parent} holds the state of {len(state['callbacks'])} callback(s) but this "
            f"run has {hooks}: resume with the same callbacks"
        )
    return state


@dataclass
class _Run:
    """One run's moving parts and mutable state; ``state_dict`` is what a checkpoint holds."""

    model: nn.Module
    objective: Objective
    config: TrainConfig
    device: torch.device
    train_data: ImageDataset
    sampler: DistributedSampler[int]
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    attack_gen: torch.Generator
    ctx: TrainContext
    hooks: list[Callback]
    threat: ThreatModel | None
    holdout: ImageDataset | None
    result: TrainResult
    best: dict[str, Any] | None = None

    @classmethod
    def start(
        cls,
        model: nn.Module,
        data: ImageDataset,
        objective: Objective,
        config: TrainConfig,
        device: torch.device,
        hooks: list[Callback],
    ) -> _Run:
        model.to(device)
        if device.type == "cuda" and config.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        threat = objective_threat(objective)
        if config.eps_warmup > 0:
            _check_warmup(objective, threat)
        train_data, holdout = holdout_split(data, config.robust_val, threat, seed=config.seed)
        group = distributed.info()
        # PyTorch's own sampler orders (and, under torchrun, shards) the data: each epoch's order depends on
        # the seed and the epoch only, so resuming needs no shuffle state and N processes with batch B see
        # the same global batches as one process with batch N * B.
        sampler: DistributedSampler[int] = DistributedSampler(
            range(len(train_data)),  # type: ignore[arg-type]
            num_replicas=group.world_size,
            rank=group.rank,
            shuffle=True,
            seed=config.seed,
        )
        steps = math.ceil(len(sampler) / config.batch_size)
        train_model: nn.Module = model
        if group.enabled:
            train_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        optimizer = _optimizer(model, config)
        ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
        ctx = TrainContext(
            model=model,
            data=train_data,
            device=device,
            seed=config.seed,
            steps=steps,
            ema=ema,
            epochs=config.epochs,
        )
        run = cls(
            model=model,
            objective=objective,
            config=config,
            device=device,
            train_data=train_data,
            sampler=sampler,
            train_model=train_model,
            optimizer=optimizer,
            scheduler=_scheduler(optimizer, config, steps * objective_replays(objective)),
            attack_gen=torch.Generator(device=device).manual_seed(config.seed + 1 + 7919 * group.rank),
            ctx=ctx,
            hooks=hooks,
            threat=threat,
            holdout=holdout,
            result=TrainResult(holdout_samples=len(holdout) if holdout is not None else 0),
        )
        for hook in hooks:
            hook.on_train_start(ctx)
        if run.stateful is not None:
            run.stateful.load_state_dict({})  # a fresh start, whatever an earlier run left in the objective
        if getattr(objective, "sample_index", False):
            objective.reserve_samples(len(train_data))  # type: ignore[attr-defined]
        return run

    @property
    def stateful(self) -> StatefulObjective | None:
        return self.objective if isinstance(self.objective, StatefulObjective) else None

    def objective_at(self, epoch: int, step: int) -> Objective:
        """The objective for this step: during ``eps_warmup`` a copy at eps scaled by the progress made."""
        warmup = self.config.eps_warmup * self.ctx.steps
        done = (epoch - 1) * self.ctx.steps + step
        if self.threat is None or done >= warmup:
            return self.objective
        ramped = dataclasses.replace(  # type: ignore[type-var]
            self.objective, threat=self.threat.with_eps(self.threat.eps * done / warmup)
        )
        # The copy shares the objective's own state (fields not set by __init__: Free-AT's carried
        # perturbation, Fast-AT's kept ones), so what it carries between batches survives the ramp.
        for f in dataclasses.fields(self.objective):  # type: ignore[arg-type]
            if not f.init:
                object.__setattr__(ramped, f.name, getattr(self.objective, f.name))
        return ramped

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def amp(self) -> bool:
        return self.cuda and self.config.amp and torch.cuda.is_bf16_supported()

    def train_epoch(self, epoch: int, progress: Callable[[StepInfo], None] | None) -> dict[str, float]:
        """One pass over the data (each batch ``replays`` times); sets ``result.stopped`` on a callback's Stop."""
        model, device, ema, amp = self.model, self.device, self.ctx.ema, self.amp
        replays, steps = objective_replays(self.objective), self.ctx.steps
        self.sampler.set_epoch(epoch)
        indices = torch.tensor(list(self.sampler), dtype=torch.long)
        loader = BatchLoader(
            self.train_data, batch_size=self.config.batch_size, device=device, indices=indices
        )
        channels_last = self.cuda and self.config.channels_last
        model.train()
        tick = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        clean_correct = torch.zeros((), dtype=torch.long, device=device)
        evaluated = images = clean_seen = 0
        # Objectives that keep something per training sample (sample_index) get the batch's positions.
        positions = indices.to(device) if getattr(self.objective, "sample_index", False) else None
        size = self.config.batch_size
        for step, (x_batch, y) in enumerate(loader, start=1):
            x = x_batch.contiguous(memory_format=torch.channels_last) if channels_last else x_batch
            objective = self.objective_at(epoch, step)
            extra = {} if positions is None else {"index": positions[(step - 1) * size : step * size]}
            for _ in range(replays):
                with _autocast(amp), fast_weight_gradients(model):
                    loss, logits = objective.loss(self.train_model, x, y, generator=self.attack_gen, **extra)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                self.optimizer.step()
                self.scheduler.step()
                if ema is not None:
                    ema.update(model)
                loss_sum += loss.detach() * x.shape[0]
                correct += (logits.detach().argmax(dim=1) == y).sum()
                evaluated += x.shape[0]
            images += x.shape[0]
            # Reporting forces a device sync, so it happens every few steps, not every step.
            report = (step - 1) % PROGRESS_EVERY == 0 or step == steps
            if self.threat is not None and report:
                clean_correct += _clean_correct(model, x, y, amp)
                clean_seen += x.shape[0]
            stop = _first(hook.on_step_end(self.ctx, epoch=epoch, step=step) for hook in self.hooks)
            if progress is not None and report:
                train_acc = int(correct) / evaluated
                progress(
                    StepInfo(
                        epoch,
                        self.config.epochs,
                        step,
                        steps,
                        float(loss.detach()),
                        train_acc,
                        images / max(time.perf_counter() - tick, 1e-9),
                        clean_accuracy=int(clean_correct) / clean_seen if clean_seen else None,
                        robust_accuracy=train_acc if self.threat is not None else None,
                    )
                )
            if stop is not None:
                self.result.stopped = _stopped(stop, epoch, step)
                break
        seconds = time.perf_counter() - tick
        self.result.seconds += seconds
        entry: dict[str, float] = {
            "epoch": float(epoch),
            "loss": float(loss_sum) / max(1, evaluated),
            "train_accuracy": int(correct) / max(1, evaluated),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "seconds": seconds,
            "samples_per_second": images / max(seconds, 1e-9),
        }
        if self.threat is not None:
            entry["train_robust_accuracy"] = entry["train_accuracy"]
            entry["train_clean_accuracy"] = int(clean_correct) / max(1, clean_seen)
        return entry

    def end_epoch(self, epoch: int, entry: dict[str, float], val_data: ImageDataset | None) -> None:
        """Epoch-end callbacks, then validation of the weights that would be delivered; record the epoch."""
        if self.result.stopped is None:
            stop = _first(hook.on_epoch_end(self.ctx, epoch=epoch) for hook in self.hooks)
            if stop is not None:
                self.result.stopped = _stopped(stop, epoch, 0)
        for hook in self.hooks:
            entry.update(hook.metrics())
        if self.result.stopped is not None:
            entry["stopped"] = 1.0
            logger.warning("training stopped: %s", self.result.stopped["reason"])
        else:
            tock = time.perf_counter()
            final = self.ctx.ema.module if self.ctx.ema is not None else self.model
            if val_data is not None:
                entry["val_accuracy"] = accuracy(final, val_data, device=self.device)
            if self.holdout is not None and self.threat is not None:
                clean, robust = robust_accuracy(
                    final,
                    self.holdout,
                    self.threat,
                    attack=self.config.robust_val_attack,
                    steps=self.config.robust_val_steps,
                    seed=self.config.seed + 2,
                    device=self.device,
                )
                entry["holdout_accuracy"], entry["holdout_robust_accuracy"] = clean, robust
                best = self.best
                if best is None or (robust, clean) > (
                    best["holdout_robust_accuracy"],
                    best["holdout_accuracy"],
                ):
                    self.best = {
                        "epoch": epoch,
                        "holdout_robust_accuracy": robust,
                        "holdout_accuracy": clean,
                        "model": {k: v.detach().clone() for k, v in final.state_dict().items()},
                    }
            entry["val_seconds"] = time.perf_counter() - tock
        self.result.history.append(entry)

    def state_dict(self) -> dict[str, Any]:
        ema, stateful = self.ctx.ema, self.stateful
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                # One attack generator per process, all kept (gathered) so that each rank resumes its own.
                "attack": distributed.gather_objects(self.attack_gen.get_state().cpu()),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.cuda else None,
            },
            "ema": ema.state_dict() if ema is not None else None,
            "objective_state": stateful.state_dict() if stateful is not None else {},
            "callbacks": [hook.state_dict() for hook in self.hooks],
            "best": self.best,
            "stopped": self.result.stopped,
            "history": self.result.history,
            "seconds": self.result.seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        group = distributed.info()
        attack_states = rng["attack"] if isinstance(rng["attack"], list) else [rng["attack"]]
        if len(attack_states) == group.world_size:
            self.attack_gen.set_state(attack_states[group.rank].to(self.attack_gen.get_state().device))
        torch.set_rng_state(rng["torch"])
        if self.cuda and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.ctx.ema is not None:
            self.ctx.ema.load_state_dict(state["ema"])
        if self.stateful is not None:
            self.stateful.load_state_dict(state["objective_state"])
        for hook, hook_state in zip(self.hooks, state["callbacks"], strict=True):
            hook.load_state_dict(hook_state)
        self.best = state["best"]
        self.result.stopped = state["stopped"]
        self.result.history = [dict(h) for h in state["history"]]
        self.result.seconds = float(state.get("seconds", 0.0))

    def deliver(self) -> None:
        """Leave in the model the weights to deliver: the most robust epoch's, else the EMA's, else the last."""
        if self.config.select == "best" and self.best is not None:
            self.model.load_state_dict(self.best["model"])
            self.result.weights, self.result.best_epoch = "best", int(self.best["epoch"])
        elif self.ctx.ema is not None:
            self.model.load_state_dict(self.ctx.ema.module.state_dict())
            self.result.weights = "ema"


@torch.no_grad()
def _clean_correct(model: nn.Module, x: Tensor, y: Tensor, amp: bool) -> Tensor:
    with eval_mode(model), _autocast(amp):
        hits: Tensor = (model(x).argmax(dim=1) == y).sum()
    return hits


def _first(stops: Iterator[Stop | None]) -> Stop | None:
    """The first Stop a callback returns; the callbacks after it are not called."""
    return next((stop for stop in stops if stop is not None), None)


def _stopped(stop: Stop, epoch: int, step: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": step,
        "reason": stop.reason,
        "restored_epoch": stop.restored_epoch,
        "restored_step": stop.restored_step,
    }


def _without(values: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in keys}


def _differing(key: str, saved: Any, now: Any) -> str:
    """``key``, and for settings dicts the options whose values differ (epochs aside): "train: lr 0.001 -> 0.002"."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return key
    saved, now = _without_epochs(saved), _without_epochs(now)
    keys = sorted(set(saved) | set(now))
    changes = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
    return f"{key}: {', '.join(changes)}"


def _without_epochs(value: Any) -> Any:
    """Settings compared on resume: everything but the epoch count, which may be extended."""
    return _without(value, ("epochs",)) if isinstance(value, dict) else value
