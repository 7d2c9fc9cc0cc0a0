from __future__ import annotations

import numpy as np
import pytest
import torch

from advrobust.errors import ConfigError
from advrobust.models import Normalize


def test_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 5, 6), dtype=np.float32)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    expected = (x - np.array(mean, np.float32)[None, :, None, None]) / np.array(std, np.float32)[
        None, :, None, None
    ]
    got = Normalize(mean, std)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_statistics_are_saved_buffers_and_gradients_flow() -> None:
    norm = Normalize([0.5, 0.25], [0.5, 2.0])
    state = norm.state_dict()
    assert set(state) == {"mean", "std"}
    assert state["std"].flatten().tolist() == [0.5, 2.0]
    assert list(norm.parameters()) == []
    x = torch.rand(2, 2, 3, 3, requires_grad=True)
    (grad,) = torch.autograd.grad(norm(x).sum(), x)
    torch.testing.assert_close(grad[:, 0], torch.full((2, 3, 3), 2.0))
    torch.testing.assert_close(grad[:, 1], torch.full((2, 3, 3), 0.5))


@pytest.mark.parametrize(
    ("mean", "std", "words"),
    [
        ([0.5], [0.0], "std must be > 0"),
        ([0.5], [-1.0], "std must be > 0"),
        ([0.5, 0.5], [0.5], "mean has 2 values but std has 1"),
        ([], [], "mean is empty"),
        ([float("nan")], [1.0], "finite numbers"),
        ("0.5", [1.0], "sequence of floats"),
    ],
)
def test_bad_statistics_are_refused(mean: object, std: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        Normalize(mean, std)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
