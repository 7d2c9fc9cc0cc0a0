"""fast_input_gradients: the native input-gradient kernel for few-channel convolutions on one or two CPU
threads."""

from __future__ import annotations

import copy
import pickle
import threading
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrobust import ThreatModel, cpu_grad
from advrobust.attacks import create_attack
from advrobust.cpu_grad import (
    MAX_CHANNELS,
    WEIGHT_GRAD_MAX_THREADS,
    fast_input_gradients,
    fast_weight_gradients,
)


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def net(in_channels: int = 1, **conv: object) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, **conv),  # type: ignore[arg-type]
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),  # too many input channels: left alone
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(5),
    ).eval()


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)
    return grad


def backward_names(model: nn.Module, x: torch.Tensor) -> list[str]:
    names: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: names.append(type(out.grad_fn).__name__))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        model(x.detach().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    return names


@pytest.mark.parametrize(
    "conv",
    [
        {},
        {"stride": 2, "padding": 1},
        {"padding": (2, 0)},
        {"stride": (2, 1), "padding": (0, 1), "bias": False},
    ],
)
@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_gradients_match_the_default_kernels(
    one_thread: None, conv: dict[str, object], in_channels: int
) -> None:
    model = net(in_channels, **conv)
    x = torch.rand(16, in_channels, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    reference = input_grad(model, x, y)
    with fast_input_gradients(model):
        assert backward_names(model, x) == ["_NativeInputGradConvBackward", "ConvolutionBackward0"]
        fast = input_grad(model, x, y)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "conv", [{"groups": 1, "dilation": 2, "padding": 2}, {"groups": 4}, {"groups": 4, "padding": "same"}]
)
def test_grouped_dilated_or_string_padded_convolutions_are_left_alone(
    one_thread: None, conv: dict[str, object]
) -> None:
    # The native kernel is slower for depthwise / grouped layers, and dilation has no native fast path.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 4, 3, **conv), nn.Flatten(), nn.LazyLinear(3)).eval()  # type: ignore[arg-type]
    x = torch.rand(4, 4, 9, 9)
    with fast_input_gradients(model):
        assert backward_names(model, x) == ["ConvolutionBackward0"]


def test_model_restored_and_nesting_and_errors(one_thread: None) -> None:
    model = net()
    x = torch.rand(2, 1, 12, 12)
    with pytest.raises(RuntimeError, match="boom"), fast_input_gradients(model):
        with fast_input_gradients(model):
            pass
        # The inner block did not undo the outer one.
        assert backward_names(model, x)[0] == "_NativeInputGradConvBackward"
        raise RuntimeError("boom")
    assert all(type(m) in (nn.Conv2d, nn.Sequential, nn.ReLU, nn.Flatten, nn.Linear) for m in model.modules())
    assert backward_names(model, x) == ["ConvolutionBackward0", "ConvolutionBackward0"]


def test_other_threads_and_copies_see_plain_convolutions(one_thread: None) -> None:
    # Another thread training the same model meanwhile still gets its weight gradients; a copy made inside
    # the block computes with its own weights.
    model = net()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    model(x)  # materialise the lazy layer
    grads: list[torch.Tensor | None] = []

    def train_step() -> None:
        torch.set_num_threads(1)
        F.cross_entropy(model(x.clone().requires_grad_(True)), y).backward()
        grads.append(model[0].weight.grad)

    with fast_input_gradients(model):
        worker = threading.Thread(target=train_step)
        worker.start()
        worker.join()
        twin = copy.deepcopy(model)
    assert grads[0] is not None and float(grads[0].abs().sum()) > 0
    with torch.no_grad():
        twin[0].weight.zero_()
        twin[0].bias.zero_()
    assert float(twin[0](x).detach().abs().max()) == 0.0
    with fast_input_gradients(twin):
        assert float(twin[0](x.requires_grad_(True)).detach().abs().max()) == 0.0


def test_unbatched_input_falls_back(one_thread: None) -> None:
    model = net()[:2]
    x = torch.rand(1, 12, 12, requires_grad=True)
    with fast_input_gradients(model):
        model(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_left_alone_where_it_does_not_pay(one_thread: None) -> None:
    model = net(MAX_CHANNELS + 1)
    x = torch.rand(2, MAX_CHANNELS + 1, 12, 12)
    with fast_input_gradients(model):
        assert backward_names(model, x) == ["ConvolutionBackward0"] * 2  # too many channels
    model = net()
    x = torch.rand(2, 1, 12, 12)
    with fast_input_gradients(model):
        assert backward_names(model.double(), x.double()) == ["ConvolutionBackward0"] * 2  # float64
        model.float()
        with torch.no_grad():
            assert model(x).grad_fn is None
    # oneDNN gains from more threads, the native kernel hardly: on two threads it still pays for one input
    # channel, not for three; on more threads never.
    two, three = net(2), net(3)
    x2, x3 = torch.rand(2, 2, 12, 12), torch.rand(2, 3, 12, 12)
    with fast_input_gradients(model), fast_input_gradients(two), fast_input_gradients(three):
        torch.set_num_threads(2)
        assert backward_names(model, x) == ["_NativeInputGradConvBackward", "ConvolutionBackward0"]
        assert backward_names(two, x2) == ["ConvolutionBackward0"] * 2
        assert backward_names(three, x3) == ["ConvolutionBackward0"] * 2
        torch.set_num_threads(3)
        assert backward_names(model, x) == ["ConvolutionBackward0"] * 2
        torch.set_num_threads(1)
        assert backward_names(three, x3) == ["_NativeInputGradConvBackward", "ConvolutionBackward0"]


def test_weights_get_no_gradient_inside(one_thread: None) -> None:
    model = net()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    with fast_input_gradients(model):
        F.cross_entropy(model(x.requires_grad_(True)), y).backward()
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert model[2].weight.grad is not None  # the other layers are untouched


def test_attacks_use_it_and_find_the_same_points(one_thread: None) -> None:
    # PGD goes through Attack.__call__, which applies fast_input_gradients; the result equals PGD on a
    # model the context cannot touch (a subclass of Conv2d is never patched) up to float rounding.
    class Plain(nn.Conv2d):
        pass

    model = net()
    x = torch.rand(32, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1).detach()
    twin = net()
    twin[0] = Plain(1, 8, 3)
    twin.load_state_dict(model.state_dict())
    seen: list[str] = []
    model[0].register_forward_hook(lambda _m, _i, out: seen.append(type(out.grad_fn).__name__))
    pgd = create_attack("pgd", threat=ThreatModel(norm="l2", eps=1.0), steps=10)
    fast = pgd(model, x, y, generator=torch.Generator().manual_seed(0))
    plain = pgd(twin, x, y, generator=torch.Generator().manual_seed(0))
    assert "_NativeInputGradConvBackward" in seen
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ fast_weight_gradients (training's backward)


def all_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The gradients of the weights and biases, and of x when it requires one."""
    model.zero_grad(set_to_none=True)
    if x.grad is not None:
        x.grad = None
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return grads + ([x.grad.clone()] if x.grad is not None else [])


@pytest.mark.parametrize(
    "conv",
    [
        {},
        {"stride": 2, "padding": 1},
        {"stride": 2},  # (12 - 3) / 2 leaves a row and a column the kernel never reaches
        {"stride": (3, 1), "padding": (0, 2), "bias": False},
        {"kernel_size": (2, 4), "stride": (1, 2), "padding": 1},
    ],
)
@pytest.mark.parametrize("input_grad", [False, True])
def test_weight_gradients_match_the_default_kernels(
    one_thread: None, conv: dict[str, object], input_grad: bool
) -> None:
    torch.manual_seed(0)
    conv = dict(conv)  # the parametrised dict is shared between the input_grad cases
    kernel = conv.pop("kernel_size", 3)
    model = nn.Sequential(
        nn.Conv2d(1, 8, kernel, **conv),  # type: ignore[arg-type]
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),  # more than one input channel: left alone
        nn.Flatten(),
        nn.LazyLinear(5),
    )
    x = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(1)).requires_grad_(input_grad)
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(2))
    reference = all_grads(model, x, y)
    with fast_weight_gradients(model):
        assert backward_names(model, x) == ["_OneChannelConvBackward", "ConvolutionBackward0"]
        fast = all_grads(model, x, y)
    assert len(fast) == len(reference) == len(list(model.parameters())) + input_grad
    for got, want in zip(fast, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_weight_gradients_only_where_they_pay(one_thread: None) -> None:
    model, three = net(), net(3)
    x, x3 = torch.rand(2, 1, 12, 12), torch.rand(2, 3, 12, 12)
    with fast_weight_gradients(model), fast_weight_gradients(three):
        assert backward_names(three, x3) == ["ConvolutionBackward0"] * 2  # three input channels
        assert backward_names(model.double(), x.double()) == ["ConvolutionBackward0"] * 2  # float64
        model.float()
        torch.set_num_threads(2)
        assert backward_names(model, x)[0] == "_OneChannelConvBackward"
        torch.set_num_threads(WEIGHT_GRAD_MAX_THREADS + 1)
        assert backward_names(model, x)[0] == "ConvolutionBackward0"
        torch.set_num_threads(1)
        model[0].weight.requires_grad_(False)  # frozen: nothing to gain
        assert backward_names(model, x)[0] == "ConvolutionBackward0"
    assert type(model[0]) is nn.Conv2d and type(three[0]) is nn.Conv2d


def test_inside_both_blocks_the_input_gradient_block_applies(one_thread: None) -> None:
    # Adversarial training: the trainer's block is open around the attack, whose own block gives the
    # weights no gradient; once the attack's block closes, the trainer's applies again.
    model = net()
    x = torch.rand(2, 1, 12, 12)
    with fast_weight_gradients(model):
        with fast_input_gradients(model):
            assert backward_names(model, x)[0] == "_NativeInputGradConvBackward"
        assert backward_names(model, x)[0] == "_OneChannelConvBackward"
        with fast_weight_gradients(model):
            pass
        assert backward_names(model, x)[0] == "_OneChannelConvBackward"
    assert backward_names(model, x)[0] == "ConvolutionBackward0"


def test_weight_gradients_support_double_backward(one_thread: None) -> None:
    # A penalty on the input gradient (e.g. GradAlign) differentiates the backward itself.
    model = net()
    x = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2))

    def penalised() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xx), y), xx, create_graph=True)
        grad.square().sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    reference = penalised()
    with fast_weight_gradients(model):
        assert backward_names(model, x)[0] == "_OneChannelConvBackward"
        fast = penalised()
    assert len(fast) == len(reference) > 0
    for got, want in zip(fast, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_the_trainer_uses_it(one_thread: None) -> None:
    # Fast-AT: the attack's forward takes the input-gradient kernel, the training forward the weight one.
    from advrobust.data import ImageDataset
    from advrobust.training import TrainConfig, create_objective, train

    model = net()
    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(
        images=torch.randint(0, 256, (64, 1, 12, 12), generator=gen, dtype=torch.uint8),
        labels=torch.randint(0, 5, (64,), generator=gen),
        num_classes=5,
        name="toy",
        classes=tuple("abcde"),
    )
    seen: list[str] = []
    model[0].register_forward_hook(
        lambda _m, _i, out: seen.append(type(out.grad_fn).__name__) if out.grad_fn is not None else None
    )
    objective = create_objective("fast-at", threat=ThreatModel(norm="linf", eps=0.1), guard=False)
    config = TrainConfig(epochs=1, batch_size=32, seed=0, robust_val=None, select="last")
    train(model, data, objective=objective, config=config)
    assert seen.count("_NativeInputGradConvBackward") == 2  # one attack per batch
    assert seen.count("_OneChannelConvBackward") == 2  # one training forward per batch
    assert type(model[0]) is nn.Conv2d


def test_weight_gradients_in_chunks_of_the_batch(one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Large inputs take the patches a few images at a time (memory bounded): the same gradient.
    model = net(stride=2, padding=1)
    x = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (10,), generator=torch.Generator().manual_seed(2))
    with fast_weight_gradients(model):
        whole = all_grads(model, x, y)
        monkeypatch.setattr(cpu_grad, "PATCH_FLOATS", 3 * 9 * 36)  # 3 images of 36 windows of 3x3
        chunked = all_grads(model, x, y)
    for got, want in zip(chunked, whole, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_weight_block_restores_on_errors_and_copies_are_plain(one_thread: None) -> None:
    model = net()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    model(x)  # materialise the lazy layer
    with pytest.raises(RuntimeError, match="boom"), fast_weight_gradients(model):
        twin = copy.deepcopy(model)
        restored = pickle.loads(pickle.dumps(model))
        raise RuntimeError("boom")
    assert type(model[0]) is nn.Conv2d
    # A copy made inside the block is a plain convolution, so no later block of another model changes it.
    assert type(twin[0]) is nn.Conv2d and type(restored[0]) is nn.Conv2d
    torch.testing.assert_close(twin(x), model(x))
    torch.testing.assert_close(restored(x), model(x))
    with fast_input_gradients(model):
        F.cross_entropy(twin(x.requires_grad_(True)), y).backward()
    assert twin[0].weight.grad is not None


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func's own
def test_forward_mode_and_torch_func_take_the_plain_convolution(one_thread: None) -> None:
    model = net()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    tangent = torch.rand_like(x)
    model(x)  # materialise the lazy layer
    params = dict(model.named_parameters())

    def loss(p: dict[str, torch.Tensor], xx: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (xx,)).square().sum()

    reference = torch.func.grad(loss)(params, x)
    _, reference_jvp = torch.func.jvp(lambda xx: model(xx), (x,), (tangent,))
    with fast_weight_gradients(model), fast_input_gradients(model):
        fast = torch.func.grad(loss)(params, x)
        _, fast_jvp = torch.func.jvp(lambda xx: model(xx), (x,), (tangent,))
    torch.testing.assert_close(fast_jvp, reference_jvp)
    for name, want in reference.items():
        torch.testing.assert_close(fast[name], want)
