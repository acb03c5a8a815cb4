"""SGD, Adam, AdamW fused kernels vs torch.optim on identical model copies: parameters and state per step."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from kernel_helpers_dense import check, record_launches

from netc.kernels import optim

# id -> (our class, torch's class, keyword arguments)
SGD, ADAM = (optim.SGD, torch.optim.SGD), (optim.Adam, torch.optim.Adam)
ADAMW = (optim.AdamW, torch.optim.AdamW)
CONFIGS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "sgd": (*SGD, {"lr": 0.1}),
    "sgd-momentum": (*SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1}),
    "sgd-nesterov": (*SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    "sgd-maximize": (*SGD, {"lr": 0.01, "momentum": 0.5, "maximize": True}),
    "sgd-nesterov-maximize": (*SGD, {"lr": 0.02, "momentum": 0.6, "nesterov": True, "weight_decay": 0.1,
                                     "maximize": True}),
    "sgd-wd-maximize": (*SGD, {"lr": 0.1, "weight_decay": 0.2, "maximize": True}),  # decay without momentum
    "adam": (*ADAM, {"lr": 0.01}),
    "adam-wd-betas": (*ADAM, {"lr": 0.02, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}),
    "adam-amsgrad-max": (*ADAM, {"lr": 0.01, "amsgrad": True, "maximize": True}),
    "adam-everything": (*ADAM, {"lr": 0.01, "betas": (0.7, 0.9), "eps": 1e-5, "weight_decay": 0.05,
                                 "amsgrad": True, "maximize": True}),  # L2 decay under maximize and amsgrad
    "adam-zero-betas": (*ADAM, {"lr": 0.01, "betas": (0.0, 0.0)}),  # log(0): the kernel's beta^t must be 0
    "adamw": (*ADAMW, {"lr": 0.01}),
    "adamw-amsgrad": (*ADAMW, {"lr": 0.02, "weight_decay": 0.3, "amsgrad": True}),
    "adamw-maximize": (*ADAMW, {"lr": 0.02, "betas": (0.85, 0.99), "eps": 1e-7, "maximize": True}),
}


def _model(dtype: torch.dtype, device: str) -> torch.nn.Module:
    """Odd parameter sizes, so the flat buffer is no multiple of any block."""
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    return model.to(device, dtype)


def _backward(model: torch.nn.Module, x: torch.Tensor) -> None:
    torch.sin(model(x)).sum().backward()  # bounded loss: maximize does not diverge


def _train(model: torch.nn.Module, opt: Any, inputs: list[torch.Tensor], sched: Any = None) -> None:
    for x in inputs:
        opt.zero_grad()
        _backward(model, x)
        opt.step()
        if sched is not None:
            sched.step()


def _assert_same(
    model: torch.nn.Module, ref: torch.nn.Module, opt: Any, ref_opt: Any, dtype: torch.dtype, name: str
) -> None:
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        check(f"{name}:param", p, q, dtype)
        state, ref_state = opt.state[p], ref_opt.state[q]
        assert set(state) == set(ref_state), f"state keys {set(state)} != {set(ref_state)}"
        for key, value in ref_state.items():
            if key == "step":
                assert float(state[key]) == float(value)
            else:
                check(f"{name}:{key}", state[key], value, dtype)


def _pair(config: str, dtype: torch.dtype, device: str, **overrides: Any):
    ours_cls, ref_cls, kwargs = CONFIGS[config]
    kwargs = {**kwargs, **overrides}
    model = _model(dtype, device)
    ref = copy.deepcopy(model)
    return model, ref, ours_cls(model.parameters(), **kwargs), ref_cls(ref.parameters(), **kwargs)


def _inputs(count: int, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    return [torch.randn(9, 7, dtype=dtype, device=device) for _ in range(count)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("config", CONFIGS)
def test_steps_match_torch(config: str, dtype: torch.dtype, device: str) -> None:
    model, ref, opt, ref_opt = _pair(config, dtype, device)
    for x in _inputs(5, dtype, device):
        _train(model, opt, [x])
        _train(ref, ref_opt, [x])
        _assert_same(model, ref, opt, ref_opt, dtype, CONFIGS[config][0].__name__)


@pytest.mark.parametrize("config", ["sgd-momentum", "adam-everything", "adamw-amsgrad"])
def test_several_programs_per_group(config: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 elements per program: each group's range spans several programs, the second group starts
    mid-block and both end in a partial one (the 58 parameters otherwise fit one program)."""
    monkeypatch.setattr(optim, "launch_config", lambda: {"BLOCK": 16, "PART_BLOCK": 16, "num_warps": 1})
    ours_cls, ref_cls, kwargs = CONFIGS[config]
    model = _model(torch.float64, device)
    ref = copy.deepcopy(model)

    def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
        return [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": kwargs["lr"] / 2}]

    opt, ref_opt = ours_cls(groups(model), **kwargs), ref_cls(groups(ref), **kwargs)
    inputs = _inputs(3, torch.float64, device)
    _train(model, opt, inputs)
    _train(ref, ref_opt, inputs)
    _assert_same(model, ref, opt, ref_opt, torch.float64, "programs")


@pytest.mark.parametrize("config", ["sgd-momentum", "adam", "adamw"])
def test_lr_schedulers_take_effect(config: str, device: str) -> None:
    for make in (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.3),
                 lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4)):
        model, ref, opt, ref_opt = _pair(config, torch.float64, device)
        inputs = _inputs(5, torch.float64, device)
        _train(model, opt, inputs, make(opt))
        _train(ref, ref_opt, inputs, make(ref_opt))
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] != CONFIGS[config][2]["lr"]
        _assert_same(model, ref, opt, ref_opt, torch.float64, "scheduled")


def _deep_model(dtype: torch.dtype, device: str) -> torch.nn.Module:
    """Five linears: 10 parameters, more than one launch's SEGMENTS, of odd sizes."""
    sizes = [7, 9, 4, 11, 5, 3]
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False)]
    return torch.nn.Sequential(*layers).to(device, dtype)


@pytest.mark.parametrize("config", ["sgd-momentum", "adam-everything"])
@pytest.mark.parametrize("deep", [False, True], ids=["one-launch", "two-launches"])
def test_clip_grad_norm_matches_torch(config: str, deep: bool, device: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """opt.clip_grad_norm_ (partial sums of squares, the scale folded into the step) equals torch's
    clip_grad_norm_ then step: several programs and partial-sum loop steps, one or two launches."""
    monkeypatch.setattr(optim, "launch_config", lambda: {"BLOCK": 16, "PART_BLOCK": 4, "num_warps": 1})
    ours_cls, ref_cls, kwargs = CONFIGS[config]
    model = _deep_model(torch.float64, device) if deep else _model(torch.float64, device)
    ref = copy.deepcopy(model)
    opt, ref_opt = ours_cls(model.parameters(), **kwargs), ref_cls(ref.parameters(), **kwargs)
    assert len(opt._chunks[0]) == (2 if deep else 1)
    for x in _inputs(3, torch.float64, device):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            _backward(m, x * 10)
        grads = [p.grad.clone() for p in model.parameters()]
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=0.1)
        assert float(norm) > 0.1, "the test needs clipping to bite"
        opt.clip_grad_norm_(0.1)
        opt.step()
        ref_opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    _assert_same(model, ref, opt, ref_opt, torch.float64, "clipped")


def test_torch_clip_grad_norm_still_works(device: str) -> None:
    """torch's own clip_grad_norm_ scales the .grad tensors, which the step reads where they are."""
    model, ref, opt, ref_opt = _pair("adam", torch.float64, device)
    for x in _inputs(2, torch.float64, device):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            _backward(m, x * 10)
            torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm=0.1)
            o.step()
    _assert_same(model, ref, opt, ref_opt, torch.float64, "torch-clipped")


def test_a_step_adds_no_gradient_ops(device: str) -> None:
    """Gradients are written, not accumulated: no zeroing by zero_grad, no add into a flat buffer by
    backward (beyond the model's own ops), and a (clipped) step is its kernels and nothing else."""
    from netc.runtime.opcount import count_step_ops

    model, _, opt, _ = _pair("adam", torch.float32, device)
    x = torch.randn(9, 7, device=device)
    _train(model, opt, [x])  # the lazy state and the lr fill happen once, before counting
    for p in model.parameters():
        p.grad = None
    plain = count_step_ops(lambda: _backward(model, x))  # the model's own ops
    counted = count_step_ops(lambda: (opt.zero_grad(), _backward(model, x)))
    assert counted.aten == plain.aten and all(p.grad is not None for p in model.parameters())
    assert not any(p.grad.untyped_storage().data_ptr() == opt._flat_param.untyped_storage().data_ptr()
                   for p in model.parameters())
    step = count_step_ops(lambda: (opt.clip_grad_norm_(1.0), opt.step()))
    assert step.total == 2, step.summary()
    assert dict(step.triton) == {"_grad_sumsq_kernel": 1, "_adam_kernel": 1}


@pytest.mark.parametrize("config", ["sgd-momentum", "adam-amsgrad-max", "adamw"])
def test_state_dict_round_trip(config: str, device: str) -> None:
    """Train 2 steps, save, load into a fresh optimizer (ours or torch's): the next steps agree."""
    model, ref, opt, ref_opt = _pair(config, torch.float64, device)
    first, later = _inputs(2, torch.float64, device), _inputs(2, torch.float64, device)
    _train(model, opt, first)
    _train(ref, ref_opt, first)
    ours_cls, ref_cls, kwargs = CONFIGS[config]
    clone, ref_clone = copy.deepcopy(model), copy.deepcopy(model)
    reloaded = ours_cls(clone.parameters(), **kwargs)
    reloaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    from_torch = ours_cls(ref_clone.parameters(), **kwargs)
    from_torch.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    for m, o in ((clone, reloaded), (ref_clone, from_torch), (ref, ref_opt)):
        _train(m, o, later)
    _assert_same(clone, ref, reloaded, ref_opt, torch.float64, "reloaded")
    _assert_same(ref_clone, ref, from_torch, ref_opt, torch.float64, "from-torch")
    # and torch's optimizer accepts ours
    torch_clone = copy.deepcopy(model)
    ref_cls(torch_clone.parameters(), **kwargs).load_state_dict(copy.deepcopy(opt.state_dict()))


def test_one_launch_per_step(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    launches = record_launches(monkeypatch, optim, "_adam_kernel")
    model, _, opt, _ = _pair("adam", torch.float32, device)
    _train(model, opt, _inputs(3, torch.float32, device))
    assert len(launches) == 3


def test_grads_are_autograds_own_and_hand_set_grads_are_read(device: str) -> None:
    """zero_grad sets .grad to None (torch's default); the step reads whatever .grad holds then:
    autograd's tensors, or a hand-set non-contiguous one."""
    model, ref, opt, ref_opt = _pair("sgd-momentum", torch.float64, device)
    inputs = _inputs(3, torch.float64, device)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    for index, x in enumerate(inputs):  # the model's own zero_grad works as well
        model.zero_grad(set_to_none=True)
        _backward(model, x)
        if index == 1:
            weight = model[0].weight
            weight.grad = weight.grad.t().contiguous().t()  # column-major
            assert not weight.grad.is_contiguous()
        opt.step()
        _train(ref, ref_opt, [x])
    _assert_same(model, ref, opt, ref_opt, torch.float64, "hand-set")


def test_param_groups_with_their_own_lr(device: str) -> None:
    model = _model(torch.float64, device)
    ref = copy.deepcopy(model)

    def groups(m: torch.nn.Module) -> list[dict[str, Any]]:
        return [{"params": m[0].parameters(), "lr": 0.05}, {"params": m[2].parameters(), "weight_decay": 0.2}]

    opt, ref_opt = optim.AdamW(groups(model), lr=0.01), torch.optim.AdamW(groups(ref), lr=0.01)
    inputs = _inputs(3, torch.float64, device)
    _train(model, opt, inputs)
    _train(ref, ref_opt, inputs)
    _assert_same(model, ref, opt, ref_opt, torch.float64, "groups")


@pytest.mark.parametrize("config", ["sgd-momentum", "adamw"])
def test_frozen_parameters_stay_put(config: str, device: str) -> None:
    """A parameter without requires_grad keeps its values; the others move exactly as torch's do."""
    model, ref, _, _ = _pair(config, torch.float64, device)
    for m in (model, ref):
        m[0].weight.requires_grad_(False)
    frozen, trained = model[0].weight.detach().clone(), model[2].weight.detach().clone()
    ours_cls, ref_cls, kwargs = CONFIGS[config]
    opt, ref_opt = ours_cls(model.parameters(), **kwargs), ref_cls(ref.parameters(), **kwargs)
    inputs = _inputs(2, torch.float64, device)
    _train(model, opt, inputs)
    _train(ref, ref_opt, inputs)
    assert torch.equal(model[0].weight, frozen)
    assert not torch.equal(model[2].weight, trained)  # the same tensor before and after: it moved
    _assert_same(model, ref, opt, ref_opt, torch.float64, "frozen")


def test_rejections(device: str) -> None:
    model = _model(torch.float64, device)
    with pytest.raises(NotImplementedError, match="dtype"):
        optim.SGD([model[0].weight, torch.nn.Parameter(torch.zeros(3, device=device))])
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(model.parameters(), momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(model.parameters(), betas=(1.0, 0.9))
    opt = optim.Adam(model.parameters())
    with pytest.raises(NotImplementedError, match="add_param_group"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2, device=device))]})
    model[0].bias.grad = None
    with pytest.raises(NotImplementedError, match="no gradient"):
        opt.step()


@pytest.mark.parametrize("config", ["sgd-momentum", "adam-amsgrad-max"])
def test_state_saves_with_safetensors(config: str, tmp_path: Any, device: str) -> None:
    """Checkpoints store each state tensor by name; safetensors refuses tensors that share memory."""
    from safetensors.torch import load_file, save_file

    model, _, opt, _ = _pair(config, torch.float64, device)
    _train(model, opt, _inputs(2, torch.float64, device))
    tensors = {
        f"{param_id}.{key}": value.detach().contiguous().cpu()
        for param_id, entries in opt.state_dict()["state"].items()
        for key, value in entries.items()
    }
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    loaded = load_file(str(tmp_path / "optimizer.safetensors"))
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[key], tensors[key]) for key in tensors)


@pytest.mark.parametrize("config", ["adam-wd-betas", "adamw-amsgrad"])
def test_step_launches_freeze_nothing_that_changes(monkeypatch: pytest.MonkeyPatch, config: str,
                                                   device: str) -> None:
    """A CUDA graph replays the kernel arguments of its capture: across steps every non-tensor
    argument is identical, and the tensors sit at the same addresses (step count and lr among them)."""
    launches = record_launches(monkeypatch, optim, "_adam_kernel")
    model, ref, opt, ref_opt = _pair(config, torch.float64, device)
    inputs = _inputs(3, torch.float64, device)
    _train(model, opt, inputs)
    _train(ref, ref_opt, inputs)
    _assert_same(model, ref, opt, ref_opt, torch.float64, "launches")  # t = 1, 2, 3 from the device
    (grid, args, kwargs), *later = launches
    for other_grid, other_args, other_kwargs in later:
        assert other_grid == grid and other_kwargs == kwargs
        # args[1:9] are the gradients: eagerly autograd's fresh tensors, under a graph its pool's
        for a, b in zip(args[:1] + args[9:], other_args[:1] + other_args[9:], strict=True):
            assert a.data_ptr() == b.data_ptr() if isinstance(a, torch.Tensor) else a == b
    steps = next(a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.float32)
    assert steps.device == model[0].weight.device and steps.tolist() == [3.0] * 4
    assert all(state["step"].device == steps.device for state in opt.state.values())
    assert int(opt._ticket) == 0  # the last program of each launch reset it


_COMPILE_FOR_SM90 = """
import itertools, os, re, subprocess, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from netc.kernels import flat_optim, optim

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")

def build(fn, types, constexprs):
    signature = {name: types.get(name, "fp32") for name in fn.arg_names}
    signature.update({name: "constexpr" for name in constexprs})
    keyed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=keyed)
    options = {"num_warps": 4, "num_stages": 1}
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([CUOBJDUMP, "--dump-resource-usage", cubin.name], capture_output=True,
                               text=True, check=True).stdout
    local = re.search(r"LOCAL:(\\d+)", usage)
    assert local and local.group(1) == "0", f"{fn.__name__} {constexprs} spills: {usage}"

for dtype in ("fp32", "fp64"):
    types = {name: "*" + dtype for name in ("p_ptr", "m_ptr", "v_ptr", "vmax_ptr", "buf_ptr", "part_ptr")}
    types.update({f"g{i}": "*" + dtype for i in range(8)})
    types.update(seg_ptr="*i64", seg_base="i32", part_base="i32", n_parts="i32", steps_ptr="*fp32",
                 ticket_ptr="*i32", lr_ptr="*fp64")
    blocks = dict(BLOCK=1024, PART_BLOCK=256)
    for flags in itertools.product([False, True], repeat=4):  # CLIP rides along, on and off
        names = ("HAS_WD", "DECOUPLED", "AMSGRAD", "MAXIMIZE")
        constexprs = dict(zip(names, flags), CLIP=flags[0] != flags[2])
        build(optim._adam_kernel, types, dict(constexprs, SEGS=flat_optim.SEGMENTS, **blocks))
    for flags in itertools.product([False, True], repeat=4):
        constexprs = dict(zip(("HAS_WD", "MOMENTUM", "FIRST", "MAXIMIZE"), flags), CLIP=flags[0] != flags[2])
        build(optim._sgd_kernel, types, dict(constexprs, NESTEROV=flags[1], **blocks))
    build(flat_optim._grad_sumsq_kernel, types, {"BLOCK": 1024})
"""


@pytest.mark.slow
def test_kernels_compile_for_a_cuda_target() -> None:
    """Every SGD/Adam variant and the clip kernel compile for sm_90 (no GPU needed) with no spills: the
    float64 exp/log/sqrt of the in-kernel bias correction, the device step load, the ticket's atomic
    and the pointer choice are code the interpreter never compiles."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")  # a compiler run: kernels must not bind to the interpreter
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
