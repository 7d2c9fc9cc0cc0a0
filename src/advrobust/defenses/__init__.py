"""Defenses that wrap a model: input transformations (evaluate them with BPDA / EOT) and randomized
smoothing with certificates; distillation (defensive, and robust from an adversarially trained teacher).
Importing this package registers the ``gaussian-augment``, ``temperature-ce``, ``distillation`` and
``robust-distillation`` training objectives.
"""

from __future__ import annotations

from advrobust.defenses.distillation import (
    Distillation,
    Distilled,
    RobustDistillation,
    TemperatureCE,
    describe_teacher,
    distill,
    fresh_copy,
    soft_labels,
)
from advrobust.defenses.smoothing import (
    Certification,
    GaussianAugment,
    SmoothedClassifier,
    beta_quantile,
    betainc,
    binomial_test_half,
    certified_accuracy,
    certify_dataset,
    clopper_pearson_lower,
)
from advrobust.defenses.transforms import (
    JPEG,
    BitDepth,
    GaussianBlur,
    GaussianNoise,
    MedianFilter,
    RandomResizePad,
    Transform,
    TVMinimization,
    create_transform,
    list_transforms,
    parse_transform,
    register_transform,
)
from advrobust.defenses.wrapper import (
    InputTransformDefense,
    defense_from_spec,
    save_defense,
    straight_through,
)

__all__ = [
    "JPEG",
    "BitDepth",
    "Certification",
    "Distillation",
    "Distilled",
    "GaussianAugment",
    "GaussianBlur",
    "GaussianNoise",
    "InputTransformDefense",
    "MedianFilter",
    "RandomResizePad",
    "RobustDistillation",
    "SmoothedClassifier",
    "TVMinimization",
    "TemperatureCE",
    "Transform",
    "beta_quantile",
    "betainc",
    "binomial_test_half",
    "certified_accuracy",
    "certify_dataset",
    "clopper_pearson_lower",
    "create_transform",
    "defense_from_spec",
    "describe_teacher",
    "distill",
    "fresh_copy",
    "list_transforms",
    "parse_transform",
    "register_transform",
    "save_defense",
    "soft_labels",
    "straight_through",
]
