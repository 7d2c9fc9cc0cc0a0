"""Input transforms: shape and range, the JPEG codec, scipy references, declarations, the wrapper, cards."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from advrobust.contract import check_model_io
from advrobust.defenses import (
    JPEG,
    BitDepth,
    GaussianBlur,
    GaussianNoise,
    InputTransformDefense,
    MedianFilter,
    RandomResizePad,
    Transform,
    TVMinimization,
    create_transform,
    list_transforms,
    parse_transform,
    save_defense,
    straight_through,
)
from advrobust.errors import ConfigError
from advrobust.models import ModelCard, create_model, load_model, read_card

Batch = tuple[torch.Tensor, torch.Tensor]


def all_transforms() -> list[Transform]:
    return [
        JPEG(quality=75),
        BitDepth(bits=4),
        GaussianBlur(sigma=1.0),
        MedianFilter(kernel_size=3),
        GaussianNoise(sigma=0.3),
        RandomResizePad(min_scale=0.8),
        TVMinimization(weight=0.1),
    ]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("transform", all_transforms(), ids=lambda t: t.name)
def test_shape_dtype_and_range_are_kept(transform: Transform, channels: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(5, channels, 20, 24)
    x[0] = 0.0
    x[1] = 1.0
    out = transform(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()


def test_every_registered_transform_is_covered() -> None:
    assert set(list_transforms()) == {t.name for t in all_transforms()}


def _pillow_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


@pytest.mark.parametrize("quality", [10, 75, 95])
def test_jpeg_is_the_codec_on_real_digits(batch: Batch, quality: int) -> None:
    x = batch[0][:200]
    out = JPEG(quality=quality)(x)
    pixels = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    expected = np.stack([_pillow_jpeg(p, quality) for p in pixels])
    assert torch.equal((out[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(expected))
    assert not torch.equal(out, x)  # it did compress


@pytest.mark.parametrize(("shape", "side"), [((50, 1, 28, 28), 96), ((40, 1, 9, 31), 40), ((5, 1, 1, 1), 8)])
@pytest.mark.parametrize("quality", [1, 75, 100])
def test_jpeg_mosaics_decode_to_each_image_coded_alone(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], side: int, quality: int
) -> None:
    """Grayscale batches go through the codec as mosaics of block-padded tiles; small mosaics force several
    rows and several mosaics, sizes that are not whole 8x8 blocks force the encoder's edge padding."""
    monkeypatch.setattr(JPEG, "MOSAIC_SIDE", side)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(quality))
    out = JPEG(quality=quality)(x)
    pixels = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    expected = np.stack([_pillow_jpeg(p, quality) for p in pixels])
    assert torch.equal((out[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(expected))


def test_jpeg_is_the_codec_on_rgb() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 16, 16, generator=generator)
    out = JPEG(quality=50)(x)
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expected = torch.from_numpy(np.stack([_pillow_jpeg(p, 50) for p in pixels])).permute(0, 3, 1, 2)
    assert torch.equal((out * 255).round().to(torch.uint8), expected)


def test_lower_jpeg_quality_distorts_more(batch: Batch) -> None:
    x = batch[0][:32]
    errors = [float((JPEG(quality=q)(x) - x).abs().mean()) for q in (95, 75, 30, 10)]
    assert errors == sorted(errors) and errors[0] < errors[-1] / 2


def test_bit_depth_rounds_to_the_levels() -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for bits in (1, 3, 8):
        levels = 2**bits - 1
        out = BitDepth(bits=bits)(x).numpy()
        np.testing.assert_allclose(out, np.round(x.numpy() * levels) / levels, atol=1e-7)
        assert len(np.unique(out)) <= levels + 1


def test_blur_and_median_match_scipy(batch: Batch) -> None:
    x = batch[0][:4]
    blurred = GaussianBlur(sigma=1.0)(x).numpy()
    # torch's "reflect" padding (d c b | a b c d) is scipy's "mirror"; both truncate at 3 sigma.
    expected = np.stack(
        [ndimage.gaussian_filter(im[0].double().numpy(), 1.0, mode="mirror", truncate=3.0) for im in x]
    )
    np.testing.assert_allclose(blurred[:, 0], expected, atol=1e-6)
    medians = MedianFilter(kernel_size=3)(x).numpy()
    expected = np.stack([ndimage.median_filter(im[0].numpy(), size=3, mode="mirror") for im in x])
    np.testing.assert_array_equal(medians[:, 0], expected)


def test_declarations_match_the_gradients(batch: Batch) -> None:
    x = batch[0][:4].clone().requires_grad_(True)
    for transform in all_transforms():
        (grad,) = torch.autograd.grad(transform(x).pow(2).sum(), x)
        useful = bool(grad.abs().sum() > 0)
        assert useful == transform.differentiable, transform
        assert transform.randomized == isinstance(transform, (GaussianNoise, RandomResizePad, TVMinimization))


def test_random_transforms_draw_new_noise_and_follow_their_generator() -> None:
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    for make in (
        lambda: GaussianNoise(sigma=0.1),
        lambda: RandomResizePad(min_scale=0.5),
        lambda: TVMinimization(keep_prob=0.5),
    ):
        transform = make()
        assert not torch.equal(transform(x), transform(x))
        transform.generator = torch.Generator().manual_seed(3)
        first = transform(x)
        transform.generator = torch.Generator().manual_seed(3)
        assert torch.equal(first, transform(x))
    noise = GaussianNoise(sigma=0.1, generator=torch.Generator().manual_seed(0))(
        torch.full((1, 1, 100, 100), 0.5)
    )
    assert abs(float((noise - 0.5).std()) - 0.1) < 0.005


def test_resize_pad_shrinks_onto_a_zero_canvas() -> None:
    x = torch.ones(64, 1, 28, 28)
    assert torch.allclose(RandomResizePad(min_scale=1.0)(x), x, atol=1e-5)
    out = RandomResizePad(min_scale=0.5, generator=torch.Generator().manual_seed(0))(x)
    covered = out.reshape(64, -1).mean(dim=1)
    # The image covers scale^2 of the canvas, scale uniform in [0.5, 1]: about 0.25 to 1.
    assert float(covered.min()) > 0.2 and float(covered.max()) <= 1.0 and float(covered.std()) > 0.05


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:] - x[..., :-1]).abs().sum() + (x[..., 1:, :] - x[..., :-1, :]).abs().sum()


def test_tv_minimisation_smooths_and_fits_the_kept_pixels(batch: Batch) -> None:
    x = batch[0][:8]
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    denoised = TVMinimization(weight=0.1, keep_prob=1.0)(noisy)
    assert _total_variation(denoised) < 0.6 * _total_variation(noisy)
    stronger = TVMinimization(weight=0.3, keep_prob=1.0)(noisy)
    assert _total_variation(stronger) < _total_variation(denoised)
    assert not TVMinimization(keep_prob=1.0).randomized
    assert not GaussianNoise(sigma=0.0).randomized and GaussianNoise(sigma=0.1).randomized
    assert torch.allclose(TVMinimization(weight=0.0, keep_prob=1.0)(x), x)


def test_specs_parse_and_round_trip() -> None:
    assert parse_transform("jpeg:30").to_dict() == {"name": "jpeg", "quality": 30}
    assert parse_transform("blur:sigma=0.5,kernel_size=5").to_dict() == {
        "name": "blur",
        "sigma": 0.5,
        "kernel_size": 5,
    }
    assert parse_transform("resize-pad").to_dict() == {"name": "resize-pad", "min_scale": 0.9}
    for transform in all_transforms():
        spec = transform.to_dict()
        rebuilt = create_transform(spec.pop("name"), **spec)
        assert rebuilt.to_dict() == transform.to_dict()
    for bad in (
        "jpeg:0",
        "jpeg:75.5",
        "bitdepth:0",
        "blur:-1",
        "median:4",
        "sharpen:2",
        "jpeg:abc",
        "noise:a=1",
    ):
        with pytest.raises(ConfigError):
            parse_transform(bad)


def test_defense_keeps_the_contract_and_declares_its_parts(trained_cnn: nn.Module, batch: Batch) -> None:
    x, y = batch
    defense = InputTransformDefense(trained_cnn, ["jpeg:75", BitDepth(bits=4)]).eval()
    logits = check_model_io(defense, x[:50], y[:50])
    assert float((logits.argmax(dim=1) == y[:50]).float().mean()) > 0.85
    assert not defense.differentiable and not defense.randomized
    noisy = InputTransformDefense(trained_cnn, [GaussianBlur(sigma=0.5), GaussianNoise(sigma=0.1)])
    assert noisy.differentiable and noisy.randomized
    with pytest.raises(ConfigError):
        InputTransformDefense(trained_cnn, [])


def test_bpda_forward_is_the_real_forward_with_the_surrogate_gradient(
    trained_cnn: nn.Module, batch: Batch
) -> None:
    x = batch[0][:16]
    defense = InputTransformDefense(trained_cnn, [BitDepth(bits=3)])
    assert torch.equal(defense.bpda_forward(x), defense(x))
    # Straight-through: the gradient at x is the model's gradient at the squeezed input.
    point = x.clone().requires_grad_(True)
    (through,) = torch.autograd.grad(defense.bpda_forward(point).sum(), point)
    squeezed = BitDepth(bits=3)(x).requires_grad_(True)
    (direct,) = torch.autograd.grad(trained_cnn(squeezed).sum(), squeezed)
    assert torch.allclose(through, direct) and float(through.abs().sum()) > 0
    (masked,) = torch.autograd.grad(defense(point).sum(), point)
    assert float(masked.abs().sum()) == 0.0  # the naive gradient is zero
    out = straight_through(JPEG(quality=50), point)
    assert torch.allclose(out, JPEG(quality=50)(x), atol=1e-6)


def test_manual_seed_makes_a_random_defense_reproducible(trained_cnn: nn.Module, batch: Batch) -> None:
    x = batch[0][:8]
    defense = InputTransformDefense(trained_cnn, ["noise:0.3", "resize-pad:0.8"])
    first = defense.manual_seed(5)(x)
    assert torch.equal(first, defense.manual_seed(5)(x))
    assert not torch.equal(first, defense(x))


def test_saved_defense_loads_behind_its_transforms(tmp_path: Path, batch: Batch) -> None:
    model = create_model("small-cnn", num_classes=10, in_channels=1, mean=[0.13], std=[0.31]).eval()
    card = ModelCard.from_model(model, input_shape=(1, 28, 28), dataset="mnist-mini")
    defense = InputTransformDefense(model, ["jpeg:60", "bitdepth:5", "blur:0.7"])
    save_defense(defense, tmp_path / "run", card)
    loaded = load_model(tmp_path / "run")
    assert isinstance(loaded, InputTransformDefense)
    assert loaded.spec() == defense.spec()
    assert read_card(tmp_path / "run").training["defense"] == defense.spec()
    x = batch[0][:8]
    assert torch.allclose(loaded(x), defense(x), atol=1e-6)
