"""Defenses that wrap a model: input transformations (evaluate them with BPDA / EOT) and randomized
smoothing with certificates. Importing this package registers the ``gaussian-augment`` training objective.
"""

from __future__ import annotations

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
    "GaussianAugment",
    "GaussianBlur",
    "GaussianNoise",
    "InputTransformDefense",
    "MedianFilter",
    "RandomResizePad",
    "SmoothedClassifier",
    "TVMinimization",
    "Transform",
    "beta_quantile",
    "betainc",
    "binomial_test_half",
    "certified_accuracy",
    "certify_dataset",
    "clopper_pearson_lower",
    "create_transform",
    "defense_from_spec",
    "list_transforms",
    "parse_transform",
    "register_transform",
    "save_defense",
    "straight_through",
]
