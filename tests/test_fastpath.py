"""The fast training step equals a plain eager step: same losses, weights and optimizer state.

On the CPU the fast step runs eagerly; with NETC_TEST_GPU=1 the same tests
run on CUDA, where it replays a captured CUDA graph.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from fake_graph import FakeGraph
from triton.runtime.interpreter import InterpretedFunction

from netc.runtime.fastpath import hyperparameters, make_train_step, push_lr, run_epoch, warm_up_and_restore

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


def _small_net(device: str) -> nn.Module:
    """(N, 1, 9, 9) -> (N, 5): odd sizes, a conv, a pool and two linears."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(3 * 3 * 3, 7), nn.Tanh(), nn.Linear(7, 5),
    ).to(device)


def _sgd(module: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)


def _adam(module: nn.Module) -> torch.optim.Optimizer:
    # capturable keeps Adam's step count on the device, which a CUDA graph needs
    on_cuda = next(module.parameters()).is_cuda
    return torch.optim.Adam(module.parameters(), lr=0.01, capturable=on_cuda)


def _batches(device: str, count: int, size: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(size, 1, 9, 9, device=device), torch.randint(0, 5, (size,), device=device))
            for _ in range(count)]


def _plain_step(module: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor) -> float:
    optimizer.zero_grad()
    loss = F.cross_entropy(module(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _assert_same_state(fast: nn.Module, plain: nn.Module, fast_opt: torch.optim.Optimizer,
                       plain_opt: torch.optim.Optimizer) -> None:
    for (name, a), b in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"weight {name}")
    for a_param, b_param in zip(fast.parameters(), plain.parameters(), strict=True):
        a_state, b_state = fast_opt.state[a_param], plain_opt.state[b_param]
        assert a_state.keys() == b_state.keys()
        for key in a_state:
            torch.testing.assert_close(torch.as_tensor(a_state[key]).cpu().float(),
                                       torch.as_tensor(b_state[key]).cpu().float(), rtol=1e-5, atol=1e-6)


def _pair(device: str, make_opt: OptimizerFactory) -> tuple[nn.Module, torch.optim.Optimizer,
                                                             nn.Module, torch.optim.Optimizer]:
    fast = _small_net(device)
    plain = copy.deepcopy(fast)
    return fast, make_opt(fast), plain, make_opt(plain)


@pytest.mark.parametrize("make_opt", [_sgd, _adam], ids=["sgd-momentum", "adam"])
def test_fast_step_equals_plain_step(device: str, make_opt: OptimizerFactory) -> None:
    fast, fast_opt, plain, plain_opt = _pair(device, make_opt)
    data = _batches(device, 4)
    step = make_train_step(fast, fast_opt, F.cross_entropy, data[0])
    assert step.mode == ("graph" if device == "cuda" else "eager"), step.reason
    for x, y in data:
        fast_loss = float(step(x, y))
        assert fast_loss == pytest.approx(_plain_step(plain, plain_opt, x, y), rel=1e-5)
    _assert_same_state(fast, plain, fast_opt, plain_opt)


@pytest.mark.parametrize("make_opt", [_sgd, _adam], ids=["sgd-momentum", "adam"])
def test_warm_up_leaves_weights_and_fresh_state(device: str, make_opt: OptimizerFactory) -> None:
    """The warm-up moves the weights; restoring must undo it and zero the state it created."""
    fast, fast_opt, plain, plain_opt = _pair(device, make_opt)
    x, y = _batches(device, 1)[0]
    warm_up_and_restore(fast, fast_opt, lambda: _plain_step(fast, fast_opt, x, y), count=2)
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert fast_opt.state, "the warm-up should have created optimizer state"
    for state in fast_opt.state.values():
        for value in state.values():
            assert not torch.as_tensor(value).any(), "state from the warm-up was not reset"
    # the next step is the first real one: momentum and Adam's moments start from zero
    assert _plain_step(fast, fast_opt, x, y) == pytest.approx(_plain_step(plain, plain_opt, x, y))
    _assert_same_state(fast, plain, fast_opt, plain_opt)


def test_changed_lr_takes_effect(device: str) -> None:
    fast, fast_opt, plain, plain_opt = _pair(device, _sgd)
    data = _batches(device, 4)
    step = make_train_step(fast, fast_opt, F.cross_entropy, data[0])
    for index, (x, y) in enumerate(data):
        if index == 2:
            for group in (*fast_opt.param_groups, *plain_opt.param_groups):
                group["lr"] = 0.37
        assert float(step(x, y)) == pytest.approx(_plain_step(plain, plain_opt, x, y), rel=1e-5)
    _assert_same_state(fast, plain, fast_opt, plain_opt)
    if step.mode == "graph":
        assert step.captures == 2, "a new lr must re-capture the graph"


def test_hyperparameters_see_lr_but_not_params() -> None:
    module = _small_net("cpu")
    optimizer = _sgd(module)
    before = hyperparameters(optimizer)
    optimizer.param_groups[0]["lr"] = 0.5
    after = hyperparameters(optimizer)
    assert before != after and ("lr", 0.5) in after[0]
    assert all(key != "params" for key, _ in after[0])


def test_run_epoch_with_short_last_batch(device: str) -> None:
    """17 samples in batches of 6: two full steps (graph on CUDA) and a short eager one."""
    fast, fast_opt, plain, plain_opt = _pair(device, _sgd)
    images = torch.randn(17, 1, 9, 9, device=device)
    labels = torch.randint(0, 5, (17,), device=device)
    order = torch.randperm(17, device=device)
    step = make_train_step(fast, fast_opt, F.cross_entropy, (images[:6], labels[:6]))
    total = run_epoch(step, images, labels, 6, order)
    expected = 0.0
    for begin in range(0, 17, 6):
        index = order[begin:begin + 6]
        expected += _plain_step(plain, plain_opt, images[index], labels[index]) * index.numel()
    assert float(total) == pytest.approx(expected, rel=1e-5)
    _assert_same_state(fast, plain, fast_opt, plain_opt)
    if device == "cuda":  # a full batch after the short one still replays the graph correctly
        x, y = _batches(device, 1)[0]
        assert float(step(x, y)) == pytest.approx(_plain_step(plain, plain_opt, x, y), rel=1e-5)


def test_gradient_clipping_matches_plain(device: str) -> None:
    fast, fast_opt, plain, plain_opt = _pair(device, _sgd)
    data = _batches(device, 3)
    step = make_train_step(fast, fast_opt, F.cross_entropy, data[0], clip=0.05)
    for x, y in data:
        step(x, y)
        plain_opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        norm = nn.utils.clip_grad_norm_(plain.parameters(), 0.05)
        assert float(norm) > 0.05, "the test needs clipping to bite"
        plain_opt.step()
    _assert_same_state(fast, plain, fast_opt, plain_opt)


def test_capture_on_cpu_is_refused() -> None:
    module = _small_net("cpu")
    with pytest.raises(NotImplementedError, match="CUDA"):
        make_train_step(module, _sgd(module), F.cross_entropy, _batches("cpu", 1)[0], capture=True)


def test_sgd_with_dampening_is_not_captured(device: str) -> None:
    """A zeroed momentum buffer damps the first step, a fresh one does not: such SGD runs eagerly,
    and its fast steps still equal plain ones."""
    from netc.runtime.fastpath import optimizer_blocker

    module = _small_net(device)
    damped = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, dampening=0.5)
    assert "dampening" in optimizer_blocker(damped)
    assert optimizer_blocker(_sgd(module)) == ""
    fast, fast_opt, plain, plain_opt = _pair(
        device, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, dampening=0.5))
    step = make_train_step(fast, fast_opt, F.cross_entropy, _batches(device, 1)[0])
    assert step.mode == "eager"
    for x, y in _batches(device, 3):
        assert float(step(x, y)) == pytest.approx(_plain_step(plain, plain_opt, x, y), rel=1e-6)
    _assert_same_state(fast, plain, fast_opt, plain_opt)


SMALL_NET = """
net small {
    input [1, 28, 28]
    maxpool2d 4
    conv2d 3 kernel=3
    relu
    flatten
    linear 10
}
"""


DROPOUT_NET = """
net dropping {
    input [1, 28, 28]
    maxpool2d 4
    flatten
    linear 11
    relu
    dropout 0.5
    linear 10
}
"""


def _netc_pair(device: str, optimizer: str, source: str = SMALL_NET) -> tuple[
        nn.Module, torch.optim.Optimizer, nn.Module, torch.optim.Optimizer]:
    """Two identical netc networks on the Triton backend, each with its own netc fused optimizer."""
    import netc
    import netc.kernels

    nets = [netc.compile(source, device=device, backend="triton", seed=7) for _ in range(2)]
    make = {"sgd": lambda params: netc.kernels.SGD(params, lr=0.05, momentum=0.9),
            "adam": lambda params: netc.kernels.Adam(params, lr=0.01)}[optimizer]
    return nets[0], make(nets[0].parameters()), nets[1], make(nets[1].parameters())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_netc_network_fast_step_equals_plain_step(device: str, optimizer: str) -> None:
    """Triton kernels + netc's fused optimizer: a graph on CUDA for SGD and Adam (device step count)."""
    fast, fast_opt, plain, plain_opt = _netc_pair(device, optimizer)
    data = [(torch.rand(5, 1, 28, 28, device=device), torch.randint(0, 10, (5,), device=device))
            for _ in range(3)]
    step = make_train_step(fast, fast_opt, fast.loss, data[0])
    assert step.mode == ("graph" if device == "cuda" else "eager"), step.reason
    for x, y in data:
        plain_opt.zero_grad()
        loss = plain.loss(plain(x), y)
        loss.backward()
        plain_opt.step()
        assert float(step(x, y)) == pytest.approx(float(loss.detach()), rel=1e-5)
    _assert_same_state(fast, plain, fast_opt, plain_opt)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_netc_eager_step_never_syncs_with_the_host(device: str, optimizer: str) -> None:
    """Forward, loss, backward and the fused optimizer: no .item() or other sync anywhere (CUDA only)."""
    if device != "cuda":
        pytest.skip("host syncs exist only with a CUDA device")
    fast, fast_opt, _, _ = _netc_pair(device, optimizer)
    x, y = torch.rand(5, 1, 28, 28, device=device), torch.randint(0, 10, (5,), device=device)
    step = make_train_step(fast, fast_opt, fast.loss, (x, y), capture=False)
    step(x, y)  # compiles the kernels first: compiling may sync, a step must not
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_step_sequence_equals_plain_steps(device: str) -> None:
    """Three steps as one graph on CUDA (eagerly on the CPU), run twice, then with a new lr."""
    from netc.runtime.sequence import StepSequence

    fast, fast_opt, plain, plain_opt = _pair(device, _sgd)
    images = torch.randn(20, 1, 9, 9, device=device)
    labels = torch.randint(0, 5, (20,), device=device)
    step = make_train_step(fast, fast_opt, F.cross_entropy, (images[:6], labels[:6]))
    sequence = StepSequence(step, images, labels, count=3)
    assert sequence.captured == (device == "cuda"), sequence.reason
    for run in range(3):
        if run == 2:
            for group in (*fast_opt.param_groups, *plain_opt.param_groups):
                group["lr"] = 0.02
        order = torch.randperm(20, device=device)[:18]
        expected = sum(_plain_step(plain, plain_opt, images[order[k:k + 6]], labels[order[k:k + 6]]) * 6
                       for k in range(0, 18, 6))
        assert float(sequence.run(order)) == pytest.approx(expected, rel=1e-5)
        _assert_same_state(fast, plain, fast_opt, plain_opt)


def test_warm_up_resets_state_keys_it_added() -> None:
    """State that existed before the warm-up keeps its values; keys the warm-up added start fresh."""
    module = _small_net("cpu")
    optimizer = _sgd(module)
    first = next(module.parameters())
    optimizer.state[first]["marker"] = torch.full((2,), 5.0)  # state present before, without momentum
    x, y = _batches("cpu", 1)[0]
    warm_up_and_restore(module, optimizer, lambda: _plain_step(module, optimizer, x, y), count=2)
    assert torch.equal(optimizer.state[first]["marker"], torch.full((2,), 5.0))
    assert not optimizer.state[first]["momentum_buffer"].any()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fake_graph_replays_dropout_and_adam_like_eager_steps(device: str, optimizer: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture one netc step (Triton dropout, fused optimizer), replay it on new batches with a new
    lr each time: each replay equals an eager step with the same RNG state and lr, so masks,
    Adam's t and the lr move per replay."""
    if device != "cpu":
        pytest.skip("the fake graph stands in for CUDA graphs on the CPU interpreter")
    fast, fast_opt, plain, plain_opt = _netc_pair(device, optimizer, DROPOUT_NET)
    data = [(torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,))) for _ in range(4)]
    step = make_train_step(fast, fast_opt, fast.loss, data[0])
    # as TrainStep does before a capture: create the optimizer's lazy state, then restore
    warm_up_and_restore(fast, fast_opt, lambda: step._eager_step(*data[0]))
    graph = FakeGraph()
    losses = []
    for index, (x, y) in enumerate(data):
        for group in (*fast_opt.param_groups, *plain_opt.param_groups):
            group["lr"] = 0.03 / (index + 1)  # a per-step schedule
        torch.manual_seed(100 + index)
        step.static_x.copy_(x)
        step.static_y.copy_(y)
        push_lr(fast_opt)  # as TrainStep.replay does (the capture here also runs the step)
        if index == 0:
            loss = graph.capture(lambda: step._eager_step(step.static_x, step.static_y), monkeypatch)
        else:
            graph.replay()
        torch.manual_seed(100 + index)
        plain_opt.zero_grad()
        want = plain.loss(plain(x), y)
        want.backward()
        plain_opt.step()
        assert float(loss) == pytest.approx(float(want.detach()), rel=1e-6)
        losses.append(float(loss))
    assert len(set(losses)) == len(losses)  # the replays really ran on the new batches
    assert not any(func is torch.ops.aten._local_scalar_dense.default for func, *_ in graph.record)
    lr_storage = fast_opt._lr.untyped_storage().data_ptr()  # no write to the device lr was captured
    assert not any(isinstance(args[0], torch.Tensor) and args[0].untyped_storage().data_ptr() == lr_storage
                   for func, args, _, _ in graph.record
                   if func is not InterpretedFunction.run and func._schema.is_mutable)
    _assert_same_state(fast, plain, fast_opt, plain_opt)


def test_netc_per_step_lr_schedule_needs_one_capture(device: str) -> None:
    """netc's optimizers read lr from the device: a new lr every step keeps one graph (on CUDA)."""
    fast, fast_opt, plain, plain_opt = _netc_pair(device, "adam")
    data = [(torch.rand(5, 1, 28, 28, device=device), torch.randint(0, 10, (5,), device=device))
            for _ in range(4)]
    step = make_train_step(fast, fast_opt, fast.loss, data[0])
    for index, (x, y) in enumerate(data):
        for group in (*fast_opt.param_groups, *plain_opt.param_groups):
            group["lr"] = 0.05 / (index + 1)
        plain_opt.zero_grad()
        loss = plain.loss(plain(x), y)
        loss.backward()
        plain_opt.step()
        assert float(step(x, y)) == pytest.approx(float(loss.detach()), rel=1e-5)
    _assert_same_state(fast, plain, fast_opt, plain_opt)
    assert step.mode == ("graph" if device == "cuda" else "eager"), step.reason
    if device == "cuda":
        assert step.captures == 1


def test_hyperparameters_leave_out_a_device_lr() -> None:
    """A netc optimizer's lr lives on the device: changing it is no reason to re-capture."""
    import netc.kernels

    module = _small_net("cpu")
    optimizer = netc.kernels.AdamW(module.parameters(), lr=0.01)
    before = hyperparameters(optimizer)
    optimizer.param_groups[0]["lr"] = 0.5
    assert hyperparameters(optimizer) == before and all(key != "lr" for key, _ in before[0])
    optimizer.param_groups[0]["weight_decay"] = 0.3
    assert hyperparameters(optimizer) != before


def test_triton_dropout_net_captures_and_draws_a_new_mask_every_step(device: str) -> None:
    """Nothing blocks capture any more (a graph on CUDA); with lr 0 the weights stay put, so three
    steps on one batch differ only by their dropout masks, and their losses must all differ."""
    fast, fast_opt, _, _ = _netc_pair(device, "adam", DROPOUT_NET)
    fast_opt.param_groups[0]["lr"] = 0.0
    weights = [param.detach().clone() for param in fast.parameters()]
    x, y = torch.rand(5, 1, 28, 28, device=device), torch.randint(0, 10, (5,), device=device)
    step = make_train_step(fast, fast_opt, fast.loss, (x, y))
    assert step.mode == ("graph" if device == "cuda" else "eager"), step.reason
    losses = [float(step(x, y)) for _ in range(3)]
    assert len(set(losses)) == 3, losses
    assert all(torch.equal(a, b) for a, b in zip(fast.parameters(), weights, strict=True))
    assert all(float(state["step"]) == 3 for state in fast_opt.state.values())


# what accumulating gradients (adds into .grad, zeroing it), seeding backward (ones_like) and torch's
# clip_grad_norm_ (norms, a scale, a multiply) would add to a step; the remaining aten ops (zeros,
# div, ...) are the kernel families' own, each in its helper's plan (issue 10)
GRADIENT_OPS = {"add", "add_", "zero_", "fill_", "ones_like", "copy_", "mul", "mul_", "clamp", "reciprocal",
                "linalg_vector_norm", "_foreach_norm", "_foreach_mul_", "_foreach_add_", "_foreach_zero_"}


@functools.cache
def _example_step_ops(example: str) -> Any:
    """The ops of one training step of examples/EXAMPLE.net (batch 3), without the tests' output poison."""
    from netc.kernels import config
    from netc.runtime.opcount import network_step_ops

    poison, config.POISON_OUTPUTS = config.POISON_OUTPUTS, False
    try:
        return network_step_ops(f"examples/{example}.net", batch=3)
    finally:
        config.POISON_OUTPUTS = poison


@pytest.mark.parametrize("example", ["lenet", "rnn"])
def test_a_step_writes_gradients_and_clips_in_one_launch(example: str) -> None:
    """No gradient adds, zeroing or fills in a training step, one optimizer launch, and `clip` (rnn.net)
    costs one launch; counted op by op on the CPU (`python -m netc.runtime.opcount FILE`)."""
    ops = _example_step_ops(example)
    optimizer = {"lenet": "_sgd_kernel", "rnn": "_adam_kernel"}[example]
    assert ops.triton[optimizer] == 1, ops.summary()
    assert ops.triton["_grad_sumsq_kernel"] == (1 if example == "rnn" else 0), ops.summary()
    assert not set(ops.aten) & GRADIENT_OPS, ops.summary()


def test_lenet_step_is_at_most_12_gpu_ops() -> None:
    """Issue 10's budget for examples/lenet.net: at most 12 GPU operations per training step, the
    optimizer's launch included, and nothing but Triton kernels (27 before: 16 Triton + 11 others)."""
    ops = _example_step_ops("lenet")
    assert ops.total <= 12 and not ops.aten, ops.summary()


@pytest.mark.parametrize(("settings", "epochs"), [
    ("optimizer adamw lr=0.01\n    schedule cosine\n    clip 0.5", 1),  # a per-step lr from the device table
    ("optimizer sgd lr=0.2 momentum=0.9\n    schedule step every=1 gamma=0.5", 2),  # lr changes per epoch
], ids=["adamw-cosine-clip", "sgd-step"])
def test_training_epochs_as_step_sequences_equal_single_steps(tmp_path: Any, settings: str, epochs: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`netc train` on CUDA: each epoch as captured multi-step graphs (chunks of 2 here) plus the short
    last batch, stood in for by the CPU fake graph; losses, weights and optimizer state equal a run of
    single eager steps, and the chunks really replayed."""
    from test_data import write_idx_dir
    from test_train import make_trainer, train_losses, weights

    from netc.runtime import fastpath, train

    write_idx_dir(tmp_path / "data", train=45, test=11, side=5, classes=4)  # 36 train: 4 full batches + 4
    monkeypatch.setattr(train, "GRAPH_CHUNK", 2)
    runs = []
    for graphed in (False, True):
        trainer = make_trainer(str(tmp_path / "data"), None, settings, backend="triton", epochs=epochs)
        trainer.net.eval()  # no dropout: its draws would differ between a fake capture and eager steps
        trainer.net.train = lambda mode=True, _net=trainer.net: _net  # type: ignore[method-assign]
        graphs: list[FakeGraph] = []
        if graphed:
            _fake_cuda_graphs(monkeypatch, trainer, graphs)
        trainer.fit()
        runs.append((trainer, graphs))
    (eager, _), (fast, graphs) = runs
    assert list(fast._sequences) == [2] and fast._sequences[2].captured and len(graphs) == 1
    assert train_losses(fast) == pytest.approx(train_losses(eager), rel=1e-6)
    for name, value in weights(eager).items():
        torch.testing.assert_close(weights(fast)[name], value, rtol=1e-6, atol=1e-7)
    _assert_same_state(fast.net, eager.net, fast.optimizer, eager.optimizer)
    assert fastpath.StepSequence is train.StepSequence


def _fake_cuda_graphs(monkeypatch: pytest.MonkeyPatch, trainer: Any, graphs: list[FakeGraph]) -> None:
    """Make `trainer` see a graph-mode step and capture StepSequences with the fake graph, which (unlike
    a CUDA capture) runs the steps: weights and optimizer state are put back after it, as on CUDA. An
    eager run first creates the optimizer's lazy state, as TrainStep's warm-up does before a capture."""
    from netc.runtime import sequence

    def record(body: Callable[[], None]) -> FakeGraph:
        graph = FakeGraph()
        warm_up_and_restore(trainer.net, trainer.optimizer, body, count=1)
        warm_up_and_restore(trainer.net, trainer.optimizer, lambda: graph.capture(body, monkeypatch), count=1)
        graphs.append(graph)
        return graph

    make_step = trainer._make_step

    def graph_mode_step() -> Any:
        step = make_step()
        step.mode = "graph"  # its own single steps still run eagerly: it holds no graph
        return step

    monkeypatch.setattr(sequence, "record_graph", record)
    trainer._make_step = graph_mode_step


def test_torch_graph_contender_gets_a_capturable_adam() -> None:
    """torch refuses to capture Adam's step unless capturable=True: the torch-graph bench contender
    asks for it, and a fast step built on any other torch Adam says why it runs eagerly."""
    from netc.dsl.ir import OptimizerConfig
    from netc.runtime.bench_contenders import make_optimizer
    from netc.runtime.fastpath import optimizer_blocker

    config = OptimizerConfig(name="adam", lr=0.01)
    capturable, _ = make_optimizer(_small_net("cpu").parameters(), config, "torch", torch.device("cpu"),
                                   capturable=True)
    assert capturable.param_groups[0]["capturable"] and optimizer_blocker(capturable) == ""
    plain, _ = make_optimizer(_small_net("cpu").parameters(), config, "torch", torch.device("cpu"))
    assert "capturable=False" in optimizer_blocker(plain)
    sgd = OptimizerConfig(name="sgd", lr=0.1)
    netc_sgd, _ = make_optimizer(_small_net("cpu").parameters(), sgd, "triton", torch.device("cpu"))
    assert optimizer_blocker(netc_sgd) == ""
