"""Evaluate a model: clean accuracy, then robust accuracy as the worst case over attacks, per sample."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from advrobust import distributed
from advrobust.attacks.adaptive import is_randomized
from advrobust.attacks.base import Attack
from advrobust.contract import ACCESS_LEVELS, Access, check_inputs, check_labels, check_outputs, eval_mode
from advrobust.errors import ConfigError, DataError, InputError
from advrobust.evaluation.results import Accuracy, AttackResult, EvalResult, attack_label
from advrobust.fileio import atomic_write_json
from advrobust.threat import ThreatModel

Batches = Iterable[tuple[Tensor, Tensor]]
ProgressFn = Callable[[int, int], None]
STATE_FORMAT = "advrobust.eval-state/2"
NONFINITE_NOTE = (
    "the model returned non-finite logits (NaN or inf) for {count} attacked point(s); they count as not robust "
    "(an argmax over NaN would read class 0): check the model or defense for overflow off the data"
)
SATURATION_NOTE = (
    "the model's softmax is saturated (p > 1 - 1e-6) on {percent:.0f}% of the first batch and every gradient "
    "attack here maximises cross-entropy, whose gradient then vanishes (as with defensive distillation): this "
    "robust accuracy is only an upper bound and may be far too high; evaluate with --suite standard (DLR and "
    "margin losses)"
)
BLACK_BOX_NOTE = (
    "black-box ({access}) evaluation: only gradient-free attacks ran, so robust accuracy is an upper bound; "
    "a white-box evaluation of the same model can only find it lower"
)


def _batches(data: Any, batch_size: int, device: torch.device) -> tuple[Batches, int]:
    """Accept an (x, y) pair of tensors, an ImageDataset, a BatchLoader or any iterable of (x, y) batches."""
    from advrobust.data import BatchLoader, ImageDataset

    if isinstance(data, ImageDataset):
        return BatchLoader(data, batch_size=batch_size, device=device), len(data)
    if isinstance(data, BatchLoader):
        return data, data.num_samples
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise InputError(f"{x.shape[0]} inputs but {y.shape[0]} labels: pass one label per input")
        chunks = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        return chunks, x.shape[0]
    if isinstance(data, Iterable):
        return data, -1
    raise InputError(
        f"cannot evaluate on {type(data).__name__}: pass (x, y) tensors, an ImageDataset or batches of (x, y)"
    )


def _time() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def batch_seed(seed: int, batch: int, attack: int, chunk: int = 0) -> int:
    """The seed of attack ``attack`` on batch ``batch``: batches are independent, so a run can resume or shard.

    ``chunk`` numbers the pieces of a batch split after an out-of-memory error (0: the whole batch).
    """
    key = f"advrobust/{seed}/{batch}/{attack}" + (f"/{chunk}" if chunk else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA out of memory, or the CPU allocator giving up)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def auto_batch_size(device: torch.device, sample_shape: Sequence[int]) -> int:
    """The batch size ``batch_size="auto"`` starts from; out-of-memory errors then halve the attack chunks.

    CPU: 256 (larger batches gain nothing there). CUDA: about 2^25 input values per batch, a power of two
    in [64, 4096] (e.g. 4096 for MNIST, 8192 -> 4096 for CIFAR-10, 64 for 224 x 224 ImageNet).
    """
    if device.type != "cuda":
        return 256
    values = max(1, int(torch.tensor(list(sample_shape)).prod()))
    size = 1 << max(0, ((1 << 25) // values).bit_length() - 1)
    return min(4096, max(64, size))


def saturated_fraction(logits: Tensor) -> float:
    """The fraction of samples whose softmax is saturated (top probability > 1 - 1e-6 in float32): there the
    cross-entropy gradient vanishes. Shape: logits (N, K)."""
    probs = torch.softmax(logits.float(), dim=1)
    return float((probs.max(dim=1).values > 1 - 1e-6).float().mean())


@contextlib.contextmanager
def seeded_randomness(model: nn.Module, device: torch.device, seed: int) -> Iterator[None]:
    """For a model that declares ``randomized``: its draws from the global RNG (of ``device``) come from
    ``seed`` inside the block, and the caller's RNG state is restored after it. Other models: nothing."""
    if not is_randomized(model):
        yield
        return
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class _Chunker:
    """Runs a per-sample function on a batch in chunks of at most ``limit`` samples (``None``: all at once),
    halving the limit after an out-of-memory error and retrying; the limit then stays for later batches.
    """

    def __init__(self) -> None:
        self.limit: int | None = None
        self.backoffs = 0

    def run(self, fn: Callable[[Tensor, Tensor, int], Tensor], x: Tensor, y: Tensor) -> Tensor:
        while True:
            size = x.shape[0] if self.limit is None else min(self.limit, x.shape[0])
            try:
                parts = [fn(x[i : i + size], y[i : i + size], i // size) for i in range(0, x.shape[0], size)]
            except (RuntimeError, torch.OutOfMemoryError) as exc:
                if not is_out_of_memory(exc) or size <= 1:
                    raise
                self.limit = size // 2
                self.backoffs += 1
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class _BatchRecord:
    """What one batch contributed; JSON-able so that an interrupted evaluation can resume."""

    index: int
    clean: list[bool]
    robust: list[bool]
    broken: list[int]
    survived: list[int]
    attacked: list[int]
    violations: list[int]
    seconds: list[float]
    clean_seconds: float
    nonfinite: int = 0  # attacked points whose logits were not all finite (counted as not robust)
    data_sha256: str = ""  # the batch's inputs and labels, to refuse resuming on other data


def _run_batch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Sequence[Attack],
    threat: ThreatModel,
    *,
    cascade: bool,
    seed: int,
    index: int,
    chunker: _Chunker,
) -> _BatchRecord:
    nonfinite = 0

    def predict(xs: Tensor, ys: Tensor, chunk: int) -> Tensor:
        # Correct means finite logits with the label on top: argmax reads a row of NaN as class 0.
        with torch.no_grad():
            logits = model(xs)
        finite = torch.isfinite(logits).all(dim=1)
        ok: Tensor = (logits.argmax(dim=1) == ys) & finite
        return torch.stack((ok, finite), dim=1)

    tick = _time()
    clean_ok = chunker.run(predict, x, y)[:, 0]
    clean_seconds = _time() - tick
    robust_ok = clean_ok.clone()
    broken = torch.where(clean_ok, -1, -2)
    k = len(attacks)
    survived, attacked, violations, seconds = [0] * k, [0] * k, [0] * k, [0.0] * k
    for i, attack in enumerate(attacks):
        idx = (robust_ok if cascade else clean_ok).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue

        def run(xs: Tensor, ys: Tensor, chunk: int, attack: Attack = attack, i: int = i) -> Tensor:
            generator = torch.Generator(device=xs.device).manual_seed(batch_seed(seed, index, i, chunk))
            return attack(model, xs, ys, generator=generator, check=False)

        tick = _time()
        x_adv = chunker.run(run, x[idx], y[idx])
        ok, finite = chunker.run(predict, x_adv, y[idx]).unbind(dim=1)
        seconds[i] = _time() - tick
        nonfinite += int((~finite).sum())
        violations[i] = int((~threat.contains(x_adv, x[idx])).sum())
        attacked[i] = idx.numel()
        survived[i] = int(ok.sum())
        newly = idx[~ok & robust_ok[idx]]
        broken[newly] = i
        robust_ok[idx[~ok]] = False
    return _BatchRecord(
        index=index,
        clean=clean_ok.cpu().tolist(),
        robust=robust_ok.cpu().tolist(),
        broken=broken.cpu().tolist(),
        survived=survived,
        attacked=attacked,
        violations=violations,
        seconds=seconds,
        clean_seconds=clean_seconds,
        nonfinite=nonfinite,
    )


def _fingerprint(
    model: nn.Module,
    attacks: Sequence[Attack],
    threat: ThreatModel,
    *,
    seed: int,
    cascade: bool,
    batch_size: int,
    access: Access,
    meta: dict[str, Any],
) -> str:
    """What makes two evaluations the same one: the model (its structure, settings and every weight, and what
    ``meta`` says of it: file checksum, address, acceleration), the attacks, threat, seed, cascade, batch size
    and access. The data are checked batch by batch (``_data_digest``)."""
    spec = {
        "model": _model_digest(model),
        "model_meta": {k: meta[k] for k in ("model", "acceleration", "defense") if k in meta},
        "threat": threat.to_dict(),
        "attacks": [[a.name, a.params()] for a in attacks],
        "seed": seed,
        "cascade": cascade,
        "batch_size": batch_size,
        "access": access,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _update(digest: Any, tensor: Tensor) -> None:
    if isinstance(tensor, (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)):
        digest.update(b"uninitialized")
        return
    digest.update(f"{tuple(tensor.shape)}:{tensor.dtype}:".encode())
    flat = tensor.detach()
    if flat.is_quantized:
        flat = flat.int_repr()
    flat = flat.resolve_conj().resolve_neg().reshape(-1).cpu().contiguous()
    digest.update(flat.view(torch.uint8).numpy().tobytes())


_SETTING_TYPES = (bool, int, float, str, type(None))


def _model_digest(model: nn.Module) -> str:
    """sha256 of the model's printed structure, of each module's plain settings (numbers, strings: a
    temperature, a noise level, an address) and of every parameter and buffer."""
    digest = hashlib.sha256(f"{type(model).__qualname__}\n{model!r}\n".encode())
    for path, module in model.named_modules():
        settings = {
            k: v
            for k, v in vars(module).items()
            if not k.startswith("_") and k != "training" and isinstance(v, _SETTING_TYPES)
        }
        digest.update(f"{path}:{type(module).__qualname__}:{sorted(settings.items())!r}\n".encode())
    for name, tensor in model.state_dict(keep_vars=True).items():
        if isinstance(tensor, Tensor):
            digest.update(name.encode())
            _update(digest, tensor)
    return digest.hexdigest()


def _data_digest(x: Tensor, y: Tensor) -> str:
    digest = hashlib.sha256()
    _update(digest, x)
    _update(digest, y)
    return digest.hexdigest()


def _load_state(path: Path, fingerprint: str) -> list[_BatchRecord]:
    if not path.exists():
        return []
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != STATE_FORMAT:
            raise ValueError("unknown format")
        records = [_BatchRecord(**r) for r in state["batches"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"evaluation state {path} is unreadable ({exc}): delete it to start the evaluation over"
        ) from None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"evaluation state {path} belongs to another evaluation (another model or other weights, attacks, "
            "threat, seed, batch size or access): delete it or use another state file"
        )
    return records


def _resume_problem(path: Path, record: _BatchRecord, x: Tensor, y: Tensor) -> str | None:
    if len(record.clean) != x.shape[0] or record.data_sha256 != _data_digest(x, y):
        return (
            f"evaluation state {path} was written for other data (batch {record.index} differs): "
            "delete it or use another state file"
        )
    return None


def evaluate(
    model: nn.Module,
    data: Any,
    attacks: Sequence[Attack] | str,
    *,
    threat: ThreatModel | None = None,
    batch_size: int | Literal["auto"] = 256,
    device: torch.device | str | None = None,
    seed: int = 0,
    cascade: bool = True,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
    meta: dict[str, Any] | None = None,
    state_path: str | Path | None = None,
    access: Access = "white-box",
) -> EvalResult:
    """Clean accuracy and robust accuracy (worst case over ``attacks`` per sample) of ``model`` on ``data``.

    ``attacks`` is a list of attacks sharing one threat model, or a suite name (``quick``, ``standard``,
    ``adaptive``) built for ``threat``. With ``cascade`` each attack runs only on the samples every earlier
    attack failed to break (same robust accuracy, lower cost); without it each attack runs on every
    clean-correct sample and its own accuracy is reported. Each (batch, attack) pair draws from its own
    generator seeded from ``seed``, so a seed and batch size reproduce the result. With ``state_path`` the
    finished batches are saved after each batch (atomically) and a rerun resumes after them. ``access`` is
    what the attacks may use of the model (``score``: gradient-free attacks; ``decision``: label-only ones);
    the result's meta records it, with a note for black-box access that robust accuracy is an upper bound.
    A batch that runs out of memory is attacked in halves (then quarters, ...; later batches keep the
    smaller size; meta records ``oom_backoffs`` and ``attack_batch_size``). ``batch_size="auto"`` starts
    from ``auto_batch_size`` (large on CUDA) and relies on that back-off.
    Shape: data yields x (B, C, H, W) floats in threat.bounds and y (B,) int64.
    """
    if isinstance(attacks, str):
        from advrobust.evaluation.suites import build_suite

        if threat is None:
            raise ConfigError(f"the suite {attacks!r} needs a threat model: pass threat=ThreatModel(...)")
        attacks = build_suite(attacks, threat, model=model)
    if not attacks:
        raise ConfigError("no attacks given: pass at least one, e.g. [PGD(threat=ThreatModel(eps=0.3))]")
    _check_access(attacks, access)
    adaptive_note = _adaptive_note(attacks, model)
    threat = threat or attacks[0].threat
    for attack in attacks:
        if attack.threat != threat:
            raise ConfigError(
                f"attack {attack.describe()} uses {attack.threat} but the evaluation uses {threat}: "
                "robust accuracy is a worst case under one threat model, give every attack the same one"
            )
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    if batch_size == "auto":
        batch_size = auto_batch_size(device, _sample_shape(data))
    elif not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    batches, total = _batches(data, batch_size, device)
    chunker = _Chunker()
    group = distributed.info()
    state_file = Path(state_path) if state_path is not None else None
    if state_file is not None and group.enabled:
        state_file = state_file.with_name(f"{state_file.name}.rank{group.rank}-of-{group.world_size}")
    records: list[_BatchRecord] = []
    fingerprint = ""
    if state_file is not None:
        fingerprint = _fingerprint(
            model,
            attacks,
            threat,
            seed=seed,
            cascade=cascade,
            batch_size=batch_size,
            access=access,
            meta=meta or {},
        )
        records = _load_state(state_file, fingerprint)
    finished = {r.index: r for r in records}
    seen: set[int] = set()

    done = sum(len(r.clean) for r in records)
    start = _time()
    num_classes: int | None = None
    saturated = 0.0
    problem: str | None = None  # a refusal found while resuming; raised on every process together
    with eval_mode(model):
        for index, (x, y) in enumerate(batches):
            # Under torchrun each rank takes every world_size-th batch; batches are seeded independently,
            # so the gathered result equals the single-process one.
            if index % group.world_size != group.rank:
                continue
            seen.add(index)
            if index in finished:
                assert state_file is not None
                problem = _resume_problem(state_file, finished[index], x, y)
                if problem is not None:
                    break
                if num_classes is not None:
                    continue
            x, y = x.to(device), y.to(device)
            check_inputs(x, threat.bounds)
            if num_classes is None:
                # The first batch is probed even when it is resumed (the saturation note depends on it),
                # seeded apart from the batch's own draws.
                with seeded_randomness(model, device, batch_seed(seed, -1, -1)):
                    logits = chunker.run(lambda xs, ys, chunk: _probe(model, xs), x, y)
                check_outputs(logits, x.shape[0])
                num_classes = logits.shape[1]
                saturated = saturated_fraction(logits)
            if index in finished:
                continue  # checked above; probed only for the saturation note
            check_labels(y, x.shape[0], num_classes)
            with seeded_randomness(model, device, batch_seed(seed, index, len(attacks))):
                record = _run_batch(
                    model, x, y, attacks, threat, cascade=cascade, seed=seed, index=index, chunker=chunker
                )
            records.append(record)
            if state_file is not None:
                record.data_sha256 = _data_digest(x, y)
                atomic_write_json(
                    state_file,
                    {
                        "format": STATE_FORMAT,
                        "fingerprint": fingerprint,
                        "batches": [asdict(r) for r in records],
                    },
                )
            done += x.shape[0]
            if progress is not None:
                progress(done, total)
    if problem is None and set(finished) - seen:
        problem = (
            f"evaluation state {state_file} holds batches the data does not have (fewer samples than when it was "
            "written): delete it or use another state file"
        )
    if group.enabled:  # every process stops with the refusal, none waits for the others in a gather
        problem = next((p for p in distributed.gather_objects(problem) if p is not None), None)
    if problem is not None:
        raise ConfigError(problem)
    resumed = len(finished)
    if group.enabled:
        records = [r for part in distributed.gather_objects(records) for r in part]
        resumed = sum(distributed.gather_objects(resumed))
    records.sort(key=lambda r: r.index)
    seconds = _time() - start
    if not records:
        raise InputError("the data yielded no samples: pass a non-empty data set")
    extra: dict[str, Any] = {"batch_size": batch_size}
    if adaptive_note is not None:
        extra.update(upper_bound=True, adaptive_note=adaptive_note)
    if chunker.backoffs:
        extra.update(oom_backoffs=chunker.backoffs, attack_batch_size=chunker.limit)
    if saturated > 0.5 and _cross_entropy_only(attacks):
        extra.update(upper_bound=True, saturation_note=SATURATION_NOTE.format(percent=100 * saturated))
    nonfinite = sum(r.nonfinite for r in records)
    if nonfinite:
        extra.update(nonfinite_logits=nonfinite, nonfinite_note=NONFINITE_NOTE.format(count=nonfinite))
    if is_randomized(model):
        extra["randomness"] = (
            "the model is randomized: its draws from the global RNG are seeded from the seed and the batch "
            "(a part with its own generator keeps it); every verdict is one draw"
        )
    return _assemble(
        records,
        attacks,
        threat,
        seed=seed,
        cascade=cascade,
        confidence=confidence,
        seconds=seconds,
        meta={**(meta or {}), **_access_meta(access), **extra},
        resumed=resumed,
    )


def _check_access(attacks: Sequence[Attack], access: Access) -> None:
    if access not in ACCESS_LEVELS:
        raise ConfigError(f"unknown access {access!r}: choose one of {', '.join(ACCESS_LEVELS)}")
    for attack in attacks:
        if access == "score" and not attack.gradient_free:
            raise ConfigError(
                f"{attack.name} needs gradients but the access is score-based: use square (or hopskipjump)"
            )
        if access == "decision" and not attack.labels_only:
            raise ConfigError(
                f"{attack.name} needs more than labels but the access is decision-based: use hopskipjump"
            )


def _adaptive_note(attacks: Sequence[Attack], model: nn.Module) -> str | None:
    """A warning when the gradient attacks all ignore what the model declares (non-differentiable or random
    parts). One adapted gradient attack in the worst case is enough: the others only add to it."""
    from advrobust.attacks.adaptive import is_differentiable, is_randomized, unadapted

    loose = unadapted(attacks, model)
    if not loose or any(not a.gradient_free and a not in loose for a in attacks):
        return None
    declares, needs = [], []
    if not is_differentiable(model):
        declares.append("a non-differentiable part")
        needs.append("BPDA")
    if is_randomized(model):
        declares.append("randomness")
        needs.append("EOT")
    names = ", ".join(attack_label(a.name, a.params()) for a in loose)
    return (
        f"the model declares {' and '.join(declares)} but {names} ran without {' and '.join(needs)}: "
        "its gradients can hide adversarial examples, so this robust accuracy is only an upper bound and "
        "may be far too high; evaluate with --suite adaptive (or wrap the attacks with adapt())"
    )


def _cross_entropy_only(attacks: Sequence[Attack]) -> bool:
    """Whether every gradient attack (wrappers looked through) maximises cross-entropy and at least one runs."""
    losses = []
    for attack in attacks:
        if attack.gradient_free:
            continue
        inner = attack
        while hasattr(inner, "inner"):
            inner = inner.inner
        losses.append(getattr(inner, "loss", None))
    return bool(losses) and all(loss == "ce" for loss in losses)


def _access_meta(access: Access) -> dict[str, Any]:
    if access == "white-box":
        return {"access": access}
    return {"access": access, "upper_bound": True, "access_note": BLACK_BOX_NOTE.format(access=access)}


def _sample_shape(data: Any) -> tuple[int, ...]:
    """The shape of one input, for ``auto_batch_size`` (unknown for plain iterables: MNIST-sized)."""
    from advrobust.data import BatchLoader, ImageDataset

    if isinstance(data, BatchLoader):
        data = data.dataset
    if isinstance(data, ImageDataset):
        return tuple(data.input_shape)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return tuple(data[0].shape[1:])
    return (1, 28, 28)


def _probe(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        out: Tensor = model(x)
    return out


def _assemble(
    records: list[_BatchRecord],
    attacks: Sequence[Attack],
    threat: ThreatModel,
    *,
    seed: int,
    cascade: bool,
    confidence: float,
    seconds: float,
    meta: dict[str, Any] | None,
    resumed: int,
) -> EvalResult:
    clean = [v for r in records for v in r.clean]
    robust = [v for r in records for v in r.robust]
    broken = [v for r in records for v in r.broken]
    n = len(clean)
    results: list[AttackResult] = []
    standing = sum(clean)
    for i, attack in enumerate(attacks):
        survived = sum(r.survived[i] for r in records)
        # What this attack fooled among what it attacked (with a cascade: the samples it broke first).
        fooled = sum(r.attacked[i] for r in records) - survived
        standing -= sum(1 for b in broken if b == i)
        correct = standing if cascade else survived
        results.append(
            AttackResult(
                name=attack.name,
                params=attack.params(),
                accuracy=Accuracy(correct, n, confidence),
                attacked=sum(r.attacked[i] for r in records),
                fooled=fooled,
                seconds=sum(r.seconds[i] for r in records),
                violations=sum(r.violations[i] for r in records),
            )
        )
    info = dict(meta or {})
    if resumed:
        info["resumed_batches"] = resumed
    return EvalResult(
        threat=threat.to_dict(),
        clean=Accuracy(sum(clean), n, confidence),
        robust=Accuracy(sum(robust), n, confidence),
        attacks=results,
        clean_correct=clean,
        robust_correct=robust,
        broken_by=broken,
        seconds=seconds,
        clean_seconds=sum(r.clean_seconds for r in records),
        seed=seed,
        cascade=cascade,
        meta=info,
    )
