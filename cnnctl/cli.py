"""The `cnnctl` command line: parses arguments, calls the library, prints, exits.

Nothing else in cnnctl prints or exits. TensorFlow and pydantic are imported inside the commands
that need them, so `cnnctl --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from cnnctl import __version__
from cnnctl.errors import CnnctlError

app = typer.Typer(
    name="cnnctl",
    help="Train convolutional neural networks from YAML experiment files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_state = {"debug": False}

ConfigArg = Annotated[Path, typer.Argument(help="Experiment YAML file, e.g. configs/mnist.yaml.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--set", "-s", help="Override a config value: key.path=value (YAML value). Repeatable.",
                 metavar="KEY=VALUE"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _quiet_tensorflow() -> None:
    """Import TensorFlow without the C++ start-up chatter it writes to fd 2 before logging is set up."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "tensorflow" in sys.modules or _state["debug"]:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _errors():
    """Render cnnctl errors as short messages (exit 2 for bad input, 1 for failed runs)."""
    try:
        yield
    except CnnctlError as exc:
        if _state["debug"]:
            raise
        for line in exc.message.splitlines():
            err.print(f"[bold red]error:[/bold red] {line}", highlight=False, markup=True)
        if exc.hint:
            err.print(f"hint: {exc.hint}", highlight=False, markup=False)
        raise typer.Exit(exc.exit_code) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"cnnctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train convolutional neural networks from YAML experiment files."""
    _state["debug"] = debug


def _load(config: Path, overrides: list[str] | None):
    from cnnctl.config import load_config

    return load_config(config, overrides or [])


@app.command()
def config(config: ConfigArg, set_: SetOpt = None) -> None:
    """Print the resolved config (after --set overrides and defaults) as YAML."""
    with _errors():
        from cnnctl.config import to_yaml

        out.print(to_yaml(_load(config, set_)), end="", highlight=False, markup=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the config format (for editor validation)."""
    from cnnctl.schema import Config

    data = Config.model_json_schema()
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "cnnctl experiment config"
    out.print(json.dumps(data, indent=2), highlight=False, markup=False)


@app.command()
def summary(config: ConfigArg, set_: SetOpt = None, json_: JsonOpt = False) -> None:
    """Keras-style model summary with MACs, memory and the published parameter count."""
    with _errors():
        cfg = _load(config, set_)
        from cnnctl.shapes import infer

        infer(cfg.model)  # shape errors before TensorFlow is imported
        _quiet_tensorflow()
        from cnnctl import runtime
        from cnnctl.model import build_model
        from cnnctl.summary import render, summarize

        plan = runtime.plan(cfg.runtime, runtime.probe_hardware())
        data = summarize(cfg, build_model(cfg.model, name=cfg.name), plan.precision)
        data["precision_reason"] = plan.precision_reason
        if json_:
            out.print(json.dumps(data, indent=2), highlight=False, markup=False)
        else:
            render(data, out)


@app.command()
def devices(json_: JsonOpt = False) -> None:
    """Devices TensorFlow sees, the CPU features that matter, and what `auto` would choose."""
    with _errors():
        _quiet_tensorflow()
        from cnnctl import runtime
        from cnnctl.schema import RuntimeConfig

        hw = runtime.probe_hardware()
        plan = runtime.plan(RuntimeConfig(), hw)
        info = {
            "cpu": {"model": hw.cpu_model, "logical_cpus": hw.logical_cpus,
                    "avx512_bf16": "avx512_bf16" in hw.cpu_flags, "amx_bf16": "amx_bf16" in hw.cpu_flags,
                    "amx_tile": "amx_tile" in hw.cpu_flags, "avx512f": "avx512f" in hw.cpu_flags},
            "gpus": [{"index": g.index, "name": g.name,
                      "compute_capability": ".".join(map(str, g.compute_capability or ())) or None}
                     for g in hw.gpus],
            "versions": runtime.versions(),
            "auto": {"device": plan.device, "device_reason": plan.device_reason,
                     "precision": plan.precision, "precision_reason": plan.precision_reason,
                     "jit_compile": plan.jit_compile, "jit_reason": plan.jit_reason},
        }
        if json_:
            out.print(json.dumps(info, indent=2), highlight=False, markup=False)
            return
        from rich.table import Table

        table = Table(title="Devices", title_justify="left")
        table.add_column("device")
        table.add_column("details")
        cpu = info["cpu"]
        features = ", ".join(k.upper() for k in ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if cpu[k]) or "none"
        table.add_row("CPU:0", f'{cpu["model"]} ({cpu["logical_cpus"]} logical CPUs); features: {features}')
        for gpu in info["gpus"]:
            table.add_row(f'GPU:{gpu["index"]}', f'{gpu["name"]}, compute capability {gpu["compute_capability"]}')
        if not info["gpus"]:
            table.add_row("GPU", "none found")
        out.print(table)
        v = info["versions"]
        out.print(f'TensorFlow {v["tensorflow"]}, Keras {v["keras"]}, CUDA {v["cuda"] or "-"}, '
                  f'cuDNN {v["cudnn"] or "-"}', highlight=False)
        a = info["auto"]
        out.print(f'auto device:    {a["device"]} ({a["device_reason"]})', highlight=False)
        out.print(f'auto precision: {a["precision"]} ({a["precision_reason"]})', highlight=False)
        out.print(f'auto XLA:       {a["jit_compile"]} ({a["jit_reason"]})', highlight=False)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
