"""``InputTransformDefense``: a model behind input transformations, keeping the model contract.

It declares ``differentiable`` and ``randomized`` (from its transforms) and offers ``bpda_forward``, the
forward pass BPDA attacks: the real transforms forward, their surrogates' gradients backward. The model card
records the transforms (``training["defense"]``), so ``load_model`` rebuilds the wrapper.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advrobust.defenses.transforms import Transform, create_transform, parse_transform
from advrobust.errors import ConfigError, ModelFileError
from advrobust.models import ModelCard, save_model

WRAPPER_NAME = "input-transform"


def straight_through(transform: Transform, x: Tensor) -> Tensor:
    """``transform(x)`` in the forward pass, the gradient of ``transform.surrogate`` in the backward pass.

    BPDA (Athalye et al., 2018, arXiv:1802.00420); with the identity surrogate, the straight-through
    estimator. Shape: like x.
    """
    out: Tensor = transform(x)
    approx = transform.surrogate(x)
    return approx + (out - approx).detach()


class InputTransformDefense(nn.Module):
    """``model(t_k(...t_1(x)))``: a classifier behind a chain of input transformations.

    ``differentiable`` is False when any transform is, ``randomized`` True when any transform is; evaluation
    reads both to choose BPDA and/or EOT. ``manual_seed(seed)`` makes the random transforms reproducible.
    Shape: x (N, C, H, W) in [0, 1] -> logits (N, K).
    """

    def __init__(self, model: nn.Module, transforms: Sequence[Transform | str]) -> None:
        super().__init__()
        built = [parse_transform(t) if isinstance(t, str) else t for t in transforms]
        for t in built:
            if not isinstance(t, Transform):
                raise ConfigError(
                    f"InputTransformDefense takes Transform modules or specs, got {type(t).__name__}: "
                    "pass e.g. [JPEG(quality=75), BitDepth(bits=4)] or ['jpeg:75', 'bitdepth:4']"
                )
        if not built:
            raise ConfigError("InputTransformDefense needs at least one transform, e.g. [JPEG(quality=75)]")
        self.model = model
        self.transforms = nn.ModuleList(built)

    def chain(self) -> list[Transform]:
        """The transforms, in the order they apply."""
        return [t for t in self.transforms if isinstance(t, Transform)]

    @property
    def differentiable(self) -> bool:
        """True when autograd through every transform gives a useful gradient (else attack with BPDA)."""
        return all(t.differentiable for t in self.chain())

    @property
    def randomized(self) -> bool:
        """True when some transform draws new randomness on each call (attack with EOT)."""
        return any(t.randomized for t in self.chain())

    def transform(self, x: Tensor) -> Tensor:
        """The transformed input the model sees."""
        for t in self.chain():
            x = t(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(self.transform(x))
        return out

    def bpda_forward(self, x: Tensor) -> Tensor:
        """The same logits as ``forward``; non-differentiable transforms backpropagate their surrogate."""
        for t in self.chain():
            x = t(x) if t.differentiable else straight_through(t, x)
        out: Tensor = self.model(x)
        return out

    def manual_seed(self, seed: int) -> InputTransformDefense:
        """Give each randomized transform its own CPU generator seeded from ``seed``; returns self."""
        for i, t in enumerate(self.chain()):
            if t.randomized:
                t.generator = torch.Generator().manual_seed(seed + i)
        return self

    def spec(self) -> dict[str, Any]:
        """What the model card records: the wrapper's kind and each transform's hyperparameters."""
        return {"wrapper": WRAPPER_NAME, "transforms": [t.to_dict() for t in self.chain()]}


def defense_from_spec(model: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild the defense a model card recorded (``InputTransformDefense.spec()``) around ``model``."""
    if spec.get("wrapper") != WRAPPER_NAME:
        raise ModelFileError(
            f"unknown defense wrapper {spec.get('wrapper')!r} in the model card: upgrade advrobust or re-save"
        )
    items = spec.get("transforms")
    if not isinstance(items, list) or not items:
        raise ModelFileError("the model card's defense lists no transforms: re-save the defended model")
    transforms = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ModelFileError(f"bad transform {item!r} in the model card: re-save the defended model")
        params = {k: v for k, v in item.items() if k != "name"}
        try:
            transforms.append(create_transform(item["name"], **params))
        except ConfigError as exc:
            raise ModelFileError(f"the model card's defense cannot be rebuilt: {exc}") from None
    return InputTransformDefense(model, transforms).eval()


def save_defense(defense: InputTransformDefense, path: str | os.PathLike[str], card: ModelCard) -> Path:
    """Save the defended model as a run directory: the inner model's weights, and ``card`` with the
    transforms recorded in ``training["defense"]`` so that ``load_model`` rebuilds the wrapper.

    ``card`` describes the inner model (e.g. the card of the run it was loaded from).
    """
    training = {**card.training, "defense": defense.spec()}
    return save_model(defense.model, path, dataclasses.replace(card, training=training))
