"""Bring your own model: import-path factories, timm, torch.export (.pt2), ONNX and HTTP endpoints.

``load_external(spec, ...)`` reads a model spec and returns the model with the access level it allows:

- ``my_pkg.my_module:build_model`` -- a factory in your code (called with no arguments, or with
  ``num_classes``/``in_channels`` when it takes them), weights from ``weights=`` (safetensors only);
- ``timm:resnet18`` -- a timm architecture (the ``timm`` extra), weights from ``weights=``;
- ``model.pt2`` -- a ``torch.export`` program, checked before loading (see ``models.exported``);
- ``model.pt`` -- a whole model pickled with ``torch.save(model)``: refused unless ``trust_pickle`` names
  the file's SHA-256 (see ``models.trust``); state dicts go to ``weights=`` instead;
- ``model.onnx`` -- white-box through a torch conversion whose outputs must match onnxruntime's, or a
  black box through onnxruntime (``access="score"`` / ``"decision"``);
- ``http(s)://...`` -- a model behind an HTTP endpoint (``models.remote``), score- or decision-based.

Normalization (``mean``/``std``) is put in front of any of them when given, so inputs stay in [0, 1].
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch
from torch import Tensor, nn

from advrobust.contract import ACCESS_LEVELS, Access
from advrobust.errors import ConfigError, ModelFileError
from advrobust.models.normalize import Normalize
from advrobust.models.trust import check_digest, is_pickle_file, load_pickled_model, load_state_dict_file

ModelKind = Literal["run", "factory", "timm", "onnx", "export", "pickle", "remote"]
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
#: A converted ONNX model must match onnxruntime within atol + rtol * max|output| on every probe.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-3


def model_kind(spec: str) -> ModelKind:
    """What kind of model ``spec`` names (see the module docstring); a run directory by default."""
    if spec.startswith(("http://", "https://")):
        return "remote"
    if spec.startswith("timm:"):
        return "timm"
    lower = spec.lower()
    if lower.endswith(".onnx"):
        return "onnx"
    if lower.endswith(".pt2"):
        return "export"
    if is_pickle_file(spec):
        return "pickle"
    if _FACTORY.fullmatch(spec) and not Path(spec).exists():
        return "factory"
    return "run"


@dataclass
class ExternalModel:
    """A model from outside advrobust's zoo: the module, the access it allows, and its provenance (JSON)."""

    model: nn.Module
    kind: ModelKind
    access: Access
    num_classes: int | None
    input_shape: tuple[int, ...] | None
    info: dict[str, Any] = field(default_factory=dict)


class ScoreOnly(nn.Module):
    """Expose only a model's output scores: no gradient flows through (score-based black-box access).

    Shape: x (N, C, H, W) -> scores (N, K), detached.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            out: Tensor = self.model(x.detach())
        return out


def hard_logits(labels: Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Labels as logits that carry nothing but the label: 0 for the label, -1 elsewhere. Shape: (N,) -> (N, K)."""
    out = torch.full((labels.shape[0], num_classes), -1.0, dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.long().unsqueeze(1), 0.0)


class DecisionOnly(nn.Module):
    """Expose only a model's predicted label, as ``hard_logits`` (decision-based black-box access).

    Shape: x (N, C, H, W) -> (N, K) with 0 at the predicted class and -1 elsewhere.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            out: Tensor = self.model(x.detach())
        return hard_logits(out.argmax(dim=1), out.shape[1], dtype=out.dtype)


class Normalized(nn.Module):
    """``Normalize(mean, std)`` in front of a model that expects normalized inputs. Shape: like ``net``."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(self.normalize(x))
        return out


def restrict_access(model: nn.Module, access: Access) -> nn.Module:
    """``model`` as seen with ``access``: itself (white-box), ``ScoreOnly`` or ``DecisionOnly``."""
    if access == "score":
        return ScoreOnly(model)
    if access == "decision":
        return DecisionOnly(model)
    return model


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_weights(model: nn.Module, path: str | Path) -> str:
    """Load a state dict into ``model`` (strict); returns the file's sha256.

    From ``.safetensors``, or from a ``torch.save``'d state dict through the weights-only unpickler
    (which builds tensors and containers, never runs code from the file).
    """
    file = Path(path)
    state: Mapping[str, Tensor]
    if is_pickle_file(str(file)):
        state, data = load_state_dict_file(file)
    elif file.suffix != ".safetensors":
        raise ModelFileError(
            f"{file}: weights are read from .safetensors files (or a torch.save'd state dict, .pt/.pth); "
            "convert with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        )
    else:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ModelFileError(f"cannot read {file} ({exc.strerror}): check the path") from None
        try:
            state = safetensors.torch.load(data)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the parser may panic on hostile bytes (a BaseException)
            raise ModelFileError(
                f"{file} is not a valid safetensors file ({str(exc)[:200]}): re-save it"
            ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:240]
        raise ModelFileError(
            f"{file} does not fit the model ({first}): pass the weights saved from this architecture"
        ) from None
    return _sha256(data)


def _call_factory(factory: Any, num_classes: int | None, in_channels: int | None) -> nn.Module:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    kwargs: dict[str, Any] = {}
    if num_classes is not None and "num_classes" in params:
        kwargs["num_classes"] = num_classes
    if in_channels is not None and "in_channels" in params:
        kwargs["in_channels"] = in_channels
    net = factory(**kwargs)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"the factory returned {type(net).__name__}, not an nn.Module: return the model")
    return net


def build_factory(spec: str, *, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """Import ``pkg.module:factory`` and build the model (your code runs: name only code you trust)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} ({exc}): install your package or add its folder to PYTHONPATH"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{module_name} has no callable {attr!r}: name a function that returns the model")
    return _call_factory(factory, num_classes, in_channels)


def build_timm(name: str, *, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """A timm architecture with fresh weights (``pretrained`` would download: pass ``weights`` instead)."""
    try:
        import timm
    except Exception as exc:  # timm imports torchvision, which fails to import beside a mismatched torch
        raise ConfigError(
            f"timm cannot be imported ({type(exc).__name__}: {str(exc)[:160]}): pip install 'advrobust[timm]' "
            "with a torchvision built for your torch"
        ) from None
    kwargs: dict[str, Any] = {"pretrained": False}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_channels is not None:
        kwargs["in_chans"] = in_channels
    try:
        net: nn.Module = timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        raise ConfigError(f"timm has no model {name!r} ({exc}): see timm.list_models()") from None
    return net


def _probe_classes(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        out = model(torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)))
    if not isinstance(out, Tensor) or out.dim() != 2:
        raise ConfigError(
            f"the model maps inputs of shape (N, {', '.join(map(str, input_shape))}) to "
            f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}: it must return logits (N, K)"
        )
    return int(out.shape[1])


def load_external(
    spec: str,
    *,
    access: Access | None = None,
    weights: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    trust_pickle: str | None = None,
    probe: Tensor | None = None,
    remote_options: Mapping[str, Any] | None = None,
) -> ExternalModel:
    """Load the model ``spec`` names (not a run directory: ``load_model`` reads those), in eval mode.

    ``access`` defaults to the strongest the model allows (white-box, except for remote endpoints). For
    ONNX white-box access, ``probe`` (inputs in [0, 1]) joins random inputs in the output-parity check.
    ``remote_options`` go to ``RemoteModel`` (``query_log``, ``timeout``, ``retries``, ``rate_limit``, ...).
    ``trust_pickle``: the SHA-256 of a ``.pt2`` or pickled ``.pt`` file whose loading could run code; it
    loads only if the file has exactly that digest.
    Shape: the model maps x (N, *input_shape) in [0, 1] to logits (N, K).
    """
    if access is not None and access not in ACCESS_LEVELS:
        raise ConfigError(f"unknown access {access!r}: choose one of {', '.join(ACCESS_LEVELS)}")
    if (mean is None) != (std is None):
        raise ConfigError("mean and std come together: give both (one value per channel) or neither")
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
    if shape is not None and (len(shape) != 3 or min(shape) < 1):
        raise ConfigError(f"input shape must be C H W (three positive integers), got {list(shape)}")
    kind = model_kind(spec)
    if trust_pickle is not None:
        trust_pickle = check_digest(trust_pickle)
        if kind not in ("export", "pickle"):
            raise ConfigError(f"--trust-pickle applies to .pt2 and pickled .pt files, not to {spec}: drop it")
    if kind == "run":
        raise ConfigError(
            f"{spec} is a run directory or an unknown spec: load run directories with load_model; otherwise "
            "pass pkg.module:factory, timm:NAME, a .onnx, .pt2 or .pt file, or an http(s):// URL"
        )
    if kind == "remote":
        from advrobust.models.remote import RemoteModel  # late: remote builds on this module

        if mean is not None or weights is not None:
            raise ConfigError("--mean/--std and --weights do not apply to a remote model: drop them")
        remote = RemoteModel(spec, num_classes=num_classes, input_shape=shape, **dict(remote_options or {}))
        level: Access = access or ("score" if remote.mode == "scores" else "decision")
        if level == "white-box" or (level == "score" and remote.mode == "labels"):
            raise ConfigError(
                f"the endpoint serves {remote.mode}, which allows at most "
                f"{'score' if remote.mode == 'scores' else 'decision'} access: pass --access "
                f"{'score' if remote.mode == 'scores' else 'decision'}"
            )
        model = remote if level == "score" or remote.mode == "labels" else DecisionOnly(remote)
        provenance = {"path": spec, "arch": "remote", "kind": kind, "access": level, **remote.info()}
        return ExternalModel(model, kind, level, remote.num_classes, remote.input_shape, provenance)
    name = Path(spec).name if kind in ("onnx", "export", "pickle") else spec
    info: dict[str, Any] = {"path": spec, "arch": name, "kind": kind}
    in_channels = shape[0] if shape is not None else None
    level = access or "white-box"
    if kind in ("factory", "timm"):
        build = build_factory if kind == "factory" else build_timm
        net = build(spec.removeprefix("timm:"), num_classes=num_classes, in_channels=in_channels)
        if weights is None:
            raise ConfigError(
                f"{spec} builds an untrained model: pass its trained weights with --weights FILE.safetensors"
            )
        info["weights"] = str(weights)
        info["weights_sha256"] = load_weights(net, weights)
    else:
        if weights is not None:
            raise ConfigError(f"a {kind} file carries its own weights: drop --weights")
        path = Path(spec)
        if not path.is_file():
            raise ModelFileError(f"no model file at {path}: check the path")
        if kind == "export":
            from advrobust.models.exported import load_pt2

            net, data, example = load_pt2(path, trust_pickle=trust_pickle)
            shape = shape or (tuple(example[1:]) if example is not None and len(example) == 4 else None)
        elif kind == "pickle":
            net, data = load_pickled_model(path, trust_pickle=trust_pickle)
            info["trusted_pickle"] = True
        else:
            from advrobust.models.onnx_model import load_onnx

            net, data, onnx_info = load_onnx(path, access=level, input_shape=shape, probe=probe)
            shape = shape or onnx_info.pop("input_shape", None)
            info.update(onnx_info)
        info["sha256"] = _sha256(data)
    if shape is None:
        raise ConfigError(f"the input shape of {spec} is unknown: pass --input-shape C H W")
    if mean is not None and std is not None:
        net = Normalized(net, mean, std)
        info["mean"], info["std"] = list(mean), list(std)
    net.eval()
    classes = _probe_classes(net, shape)
    if num_classes is not None and classes != num_classes:
        raise ConfigError(
            f"{spec} returns {classes} scores but --num-classes is {num_classes}: fix one of them"
        )
    net = restrict_access(net, level)
    info["access"] = level
    return ExternalModel(net, kind, level, classes, shape, info)
