"""Validated settings for the CLI and YAML configs: the same names as the Python API's keywords."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from advrobust.errors import ConfigError


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSettings(_Settings):
    """Where the data comes from."""

    data: str = "mnist-mini"
    root: str | None = None
    download: bool = False
    mirror: str | None = None


class ModelSourceSettings(_Settings):
    """A model from outside advrobust's zoo (``--model`` other than a run directory) and the access to it."""

    weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    input_shape: list[int] | None = Field(None, min_length=3, max_length=3)
    num_classes: int | None = Field(None, ge=2)
    access: Literal["white-box", "score", "decision"] | None = None
    trust_pickle: str | None = None  # the SHA-256 of a .pt2 / pickled .pt file trusted to run code
    # Remote endpoints (http(s):// models).
    query_log: str | None = None
    timeout: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0)
    rate_limit: float | None = Field(None, gt=0)


class TrainSettings(DataSettings):
    """``advrobust train``: build an architecture, train it with an objective, save it as a run directory."""

    model: str = "small-cnn"
    defense: str = "standard"
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "cosine", "onecycle", "cyclic"] = "constant"
    normalize: bool = True
    seed: int = 0
    out: str = "runs/model"
    resume: bool = False
    device: str | None = None
    # The defense's options: None takes the objective's default; one it does not have is an error.
    norm: Literal["linf", "l2", "l1"] | None = None
    eps: float | None = Field(None, ge=0)
    steps: int | None = Field(None, ge=1)
    step_size: float | None = Field(None, gt=0)
    beta: float | None = Field(None, ge=0)
    replays: int | None = Field(None, ge=1)
    clean_weight: float | None = Field(None, ge=0, le=1)
    attack_mode: Literal["eval", "train"] | None = None
    guard: bool | None = None
    guard_patience: int | None = Field(None, ge=0)
    prior_start: bool | None = None
    prior_reg: float | None = Field(None, ge=0)
    sigma: float | None = Field(None, ge=0)
    # Distillation: the temperature, the weight of the soft-label term, the teacher's run directory.
    temperature: float | None = Field(None, gt=0)
    alpha: float | None = Field(None, ge=0, le=1)
    teacher: str | None = None
    # Trainer options.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    robust_val: int | None = Field(None, ge=0)
    robust_val_attack: Literal["apgd", "pgd"] = "apgd"
    robust_val_steps: int = Field(20, ge=1)
    eps_warmup: float = Field(0.0, ge=0)


class EvalSettings(DataSettings, ModelSourceSettings):
    """``advrobust eval``: attack a saved model under a threat model and report clean and robust accuracy."""

    model: str
    split: Literal["train", "test"] = "test"
    n: int | None = Field(None, ge=1)
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: list[float] = Field(default_factory=lambda: [0.3], min_length=1)
    attack: list[str] | None = Field(None, min_length=1)
    suite: Literal["quick", "standard", "adaptive"] | None = None
    curve: bool = False
    curve_points: int = Field(13, ge=2)
    steps: int | None = Field(None, ge=1)
    step_size: float | None = Field(None, gt=0)
    restarts: int | None = Field(None, ge=1)
    loss: Literal["ce", "margin", "dlr"] | None = None
    queries: int | None = Field(None, ge=1)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = 256
    cascade: bool = True
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    json_path: str | None = Field(None, alias="json")
    state: str | None = None
    device: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("eps", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) else value

    @field_validator("attack", mode="before")
    @classmethod
    def _one_or_many_names(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _attacks_or_suite(self) -> EvalSettings:
        if self.attack is not None and self.suite is not None:
            raise ValueError("give --attack or --suite, not both")
        return self

    @property
    def attack_names(self) -> list[str]:
        """The attacks to run when no suite is named (PGD by default)."""
        return self.attack if self.attack is not None else ["pgd"]

    @field_validator("eps")
    @classmethod
    def _eps_non_negative(cls, value: list[float]) -> list[float]:
        if any(e < 0 for e in value):
            raise ValueError("every eps must be >= 0")
        return value


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file's mapping; dashes in keys are read as underscores (``batch-size`` = ``batch_size``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found: check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: pass the YAML file itself") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text: save it as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {path} is not valid YAML ({str(exc).splitlines()[0]}): fix its syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of option: value, got {type(data).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_settings(kind: type[_Settings], config: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Validate ``config`` updated with the options given on the command line (those not None)."""
    merged = {**config, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return kind.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "config"
            problems.append(f"{where.replace('_', '-')}: {err['msg']}")
        raise ConfigError("invalid option(s): " + "; ".join(problems)) from None


class AuditSettings(DataSettings, ModelSourceSettings):
    """``advrobust audit``: run the gradient-masking checks on a saved model."""

    model: str
    split: Literal["train", "test"] = "test"
    n: int = Field(200, ge=1)
    norm: Literal["linf", "l2", "l1"] = "linf"
    eps: float = Field(0.3, ge=0)
    steps: int = Field(40, ge=1)
    square_queries: int = Field(1000, ge=1)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    json_path: str | None = Field(None, alias="json")
    device: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DefendSettings(_Settings):
    """``advrobust defend``: wrap a saved model in input transformations and save the defended model."""

    model: str
    transform: list[str] = Field(min_length=1)
    out: str

    @field_validator("transform", mode="before")
    @classmethod
    def _one_or_many_transforms(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class CertifySettings(DataSettings):
    """``advrobust certify``: certified l2 radii of a saved model under randomized smoothing (Cohen et al.)."""

    model: str
    split: Literal["train", "test"] = "test"
    images: int = Field(100, ge=1)
    sigma: float | None = Field(None, gt=0)
    n0: int = Field(100, ge=1)
    n: int = Field(100_000, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)
    radii: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0], min_length=1)
    batch_size: int = Field(1000, ge=1)
    seed: int = 0
    json_path: str | None = Field(None, alias="json")
    device: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("radii", mode="before")
    @classmethod
    def _one_or_many_radii(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float)) else value
