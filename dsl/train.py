"""The train block (ast.TrainBlock or None) -> TrainConfig with every default filled, or ArgErrors.

Defaults follow spec/LANGUAGE.md. Choices made where the spec is silent:
- `schedule step` needs `every=E` (no period is a sensible default); `gamma` defaults to
  0.1, as torch.optim.lr_scheduler.StepLR's.
- `optimizer sgd` takes `dampening` too (torch.optim.SGD's); `nesterov=true` needs
  momentum > 0 and dampening 0, as PyTorch requires.
- `augment` takes shift (pixels, at most 100), rotate (degrees, at most 180) and scale (below 1);
  all three 0 (a bare `augment`) leaves the images as they are.
- `seed` is in [0, 2**32 - 1] (the epoch order seeds torch with seed * 1000003 + epoch,
  which must fit 64 bits); `clip` and `lr` must be positive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netc.dsl import ast
from netc.dsl.args import ArgError, ArgSpec, bind, convert, did_you_mean
from netc.dsl.errors import Loc
from netc.dsl.ir import AugmentConfig, DataConfig, OptimizerConfig, ScheduleConfig, TrainConfig

DATASETS = ("mnist", "fashion_mnist")
OPTIMIZERS = ("sgd", "adam", "adamw")
LOSSES = ("cross_entropy",)
SCHEDULES = ("none", "step", "cosine")
MAX_SEED = 2**32 - 1

_LR = "lr"
_NONNEGATIVE = {"minimum": 0.0}


def _adam_args(weight_decay: float) -> tuple[ArgSpec, ...]:
    return (ArgSpec(_LR, "float", 0.001, above=0.0),
            ArgSpec("betas", "floats2", (0.9, 0.999), minimum=0.0, below=1.0),
            ArgSpec("eps", "float", 1e-8, above=0.0),
            ArgSpec("weight_decay", "float", weight_decay, **_NONNEGATIVE))


# optimizer name -> its keyword arguments, named and defaulted as torch.optim names them
OPTIMIZER_ARGS: dict[str, tuple[ArgSpec, ...]] = {
    "sgd": (ArgSpec(_LR, "float", 0.01, above=0.0), ArgSpec("momentum", "float", 0.0, **_NONNEGATIVE),
            ArgSpec("dampening", "float", 0.0, **_NONNEGATIVE),
            ArgSpec("weight_decay", "float", 0.0, **_NONNEGATIVE), ArgSpec("nesterov", "bool", False)),
    "adam": _adam_args(0.0),
    "adamw": _adam_args(0.01),
}
SCHEDULE_ARGS: dict[str, tuple[ArgSpec, ...]] = {
    "none": (),
    "step": (ArgSpec("every", "int", minimum=1), ArgSpec("gamma", "float", 0.1, above=0.0)),
    "cosine": (),
}

# setting -> (its arguments, a function of the bound values -> TrainConfig fields)
_SIMPLE: dict[str, tuple[tuple[ArgSpec, ...], Callable[[dict], dict[str, Any]]]] = {
    "data": ((ArgSpec("dataset", "choice", positional=True, choices=DATASETS, noun="dataset"),
              ArgSpec("val", "float", 0.0, minimum=0.0, below=1.0), ArgSpec("path", "string", None),
              ArgSpec("normalize", "bool", False)),
             lambda v: {"data": DataConfig(v["dataset"], v["val"], v["path"], v["normalize"])}),
    "batch": ((ArgSpec("batch", "int", positional=True, minimum=1),), lambda v: {"batch": v["batch"]}),
    "epochs": ((ArgSpec("epochs", "int", positional=True, minimum=1),), lambda v: {"epochs": v["epochs"]}),
    "loss": ((ArgSpec("name", "choice", positional=True, choices=LOSSES, noun="loss"),
              ArgSpec("label_smoothing", "float", 0.0, minimum=0.0, maximum=1.0)),
             lambda v: {"loss": v["name"], "label_smoothing": v["label_smoothing"]}),
    "clip": ((ArgSpec("clip", "float", positional=True, above=0.0),), lambda v: {"clip": v["clip"]}),
    "seed": ((ArgSpec("seed", "int", positional=True, minimum=0, maximum=MAX_SEED),),
             lambda v: {"seed": v["seed"]}),
    "augment": ((ArgSpec("shift", "float", 0.0, minimum=0.0, maximum=100.0),
                 ArgSpec("rotate", "float", 0.0, minimum=0.0, maximum=180.0),
                 ArgSpec("scale", "float", 0.0, minimum=0.0, below=1.0)),
                lambda v: {"augment": AugmentConfig(v["shift"], v["rotate"], v["scale"])}),
}
SETTINGS = ("data", "batch", "epochs", "optimizer", "loss", "schedule", "clip", "augment", "seed")


def check_train(block: ast.TrainBlock | None, layer_names: tuple[str, ...] = ()) -> tuple[TrainConfig, list]:
    """Resolve the train block; return (config, [ArgError]) — the config is only valid without errors."""
    if block is None:
        return TrainConfig(), []
    fields: dict[str, Any] = {}
    locs: dict[str, Loc] = {}
    errors: list[ArgError] = []
    for setting in block.settings:
        if setting.name in locs:
            first = locs[setting.name]
            errors.append(ArgError(f"`{setting.name}` given twice (first on line {first.line}): keep one",
                                   setting.loc))
            continue
        if setting.name not in SETTINGS:
            errors.append(ArgError(_unknown_setting(setting.name, layer_names), setting.loc))
            continue
        locs[setting.name] = setting.loc
        values, problems = _setting(setting)
        errors.extend(problems)
        if not problems:
            fields.update(values)
    return TrainConfig(**fields, locs=locs), errors


def _unknown_setting(name: str, layer_names: tuple[str, ...]) -> str:
    hint = did_you_mean(name, SETTINGS)
    if not hint and name in layer_names:
        hint = " (layers go in the `net` block)"
    return f"unknown train setting '{name}'{hint or ' (settings: ' + ', '.join(SETTINGS) + ')'}"


def _setting(setting: ast.Setting) -> tuple[dict[str, Any], list[ArgError]]:
    if setting.name in _SIMPLE:
        specs, build = _SIMPLE[setting.name]
        values, errors = bind(setting.name, setting.args, specs, setting.loc)
        return (build(values) if not errors else {}), errors
    table = OPTIMIZER_ARGS if setting.name == "optimizer" else SCHEDULE_ARGS
    choices = OPTIMIZERS if setting.name == "optimizer" else SCHEDULES
    noun = "optimizer" if setting.name == "optimizer" else "schedule"
    args = setting.args
    if not args or args[0].name is not None:
        return {}, [ArgError(f"`{setting.name}` needs a name first: {', '.join(choices)}", setting.loc)]
    try:
        name = convert(ArgSpec(noun, "choice", choices=choices, noun=noun), args[0].value)
    except ArgError as error:
        return {}, [error]
    values, errors = bind(f"{setting.name} {name}", args[1:], table[name], setting.loc)
    if errors:
        return {}, errors
    if setting.name == "schedule":
        return {"schedule": ScheduleConfig(name, values.get("every", 1), values.get("gamma", 0.1))}, []
    return _optimizer(name, values, setting.loc)


def _optimizer(name: str, values: dict[str, Any], loc: Loc) -> tuple[dict[str, Any], list[ArgError]]:
    if name == "sgd":
        if values["nesterov"] and (values["momentum"] <= 0 or values["dampening"] != 0):
            return {}, [ArgError("nesterov=true needs momentum above 0 and dampening=0", loc)]
        config = OptimizerConfig("sgd", values["lr"], values["momentum"], values["dampening"],
                                 values["nesterov"], values["weight_decay"])
    else:
        config = OptimizerConfig(name, values["lr"], momentum=0.0, weight_decay=values["weight_decay"],
                                 betas=values["betas"], eps=values["eps"])
    return {"optimizer": config}, []
