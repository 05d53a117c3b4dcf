"""The Keras-style model summary, plus what Keras does not show: MACs and memory.

Layer names, output shapes and parameter counts come from the built Keras model; MACs come from
shapes.infer (the same walk, checked against Keras by the tests). Rendering takes a rich Console,
so the CLI prints it and train.py writes the same text into the run directory.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from cnnctl.schema import Config
from cnnctl.shapes import infer

BYTES = {"float32": 4, "mixed_float16": 2, "mixed_bfloat16": 2}


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} GB"


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def summarize(config: Config, model, precision: str) -> dict:
    """Summary data for `model` (built from `config.model`) at `precision` (a Keras policy name)."""
    infos = infer(config.model)
    layers = []
    for layer, info in zip(model.layers, infos, strict=True):
        layers.append({
            "name": layer.name,
            "type": type(layer).__name__,
            "output_shape": [None, *[int(d) for d in layer.output.shape[1:]]],
            "params": int(layer.count_params()),
            "macs": info.macs,
        })
    trainable = sum(int(math.prod(w.shape)) for w in model.trainable_weights)
    total = int(model.count_params())
    batch = config.train.batch_size
    activation_elements = math.prod(config.model.input_shape) + sum(math.prod(i.output_shape) for i in infos)
    data = {
        "model": config.name,
        "input_shape": [None, *config.model.input_shape],
        "layers": layers,
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "total_macs": sum(i.macs for i in infos),
        "precision": precision,
        "batch_size": batch,
        # Variables stay float32 under mixed precision; activations use the compute dtype.
        "param_bytes": total * 4,
        "activation_bytes_per_batch": activation_elements * batch * BYTES.get(precision, 4),
    }
    if config.data.augment:  # run on training batches in the input pipeline, not part of the model
        from cnnctl.augment import names

        data["augment"] = names(config.data.augment)
    if config.expect and config.expect.params is not None:
        data["expected_params"] = config.expect.params
        data["params_match"] = total == config.expect.params
    return data


def render(data: dict, console: Console) -> None:
    """Print the summary like keras.Model.summary(), with a MACs column and memory lines."""
    table = Table(title=f'Model: "{data["model"]}"', title_justify="left", show_lines=False)
    # On a narrow console only the name column may wrap; numbers are never cut to an ellipsis.
    table.add_column("Layer (type)", overflow="fold")
    table.add_column("Output Shape", no_wrap=True)
    table.add_column("Param #", justify="right", no_wrap=True)
    table.add_column("MACs", justify="right", no_wrap=True)
    for layer in data["layers"]:
        shape = "(" + ", ".join("None" if d is None else str(d) for d in layer["output_shape"]) + ")"
        table.add_row(f'{layer["name"]} ({layer["type"]})', shape, f'{layer["params"]:,}',
                      f'{layer["macs"]:,}' if layer["macs"] else "0")
    console.print(table)
    console.print(f' Total params: {data["total_params"]:,} ({_human_bytes(data["param_bytes"])})')
    console.print(f' Trainable params: {data["trainable_params"]:,}')
    console.print(f' Non-trainable params: {data["non_trainable_params"]:,}')
    console.print(f' MACs per image: {data["total_macs"]:,} ({_human_count(data["total_macs"])}MACs,'
                  f' forward pass)')
    console.print(f' Precision: {data["precision"]} (parameters {_human_bytes(data["param_bytes"])} in float32;'
                  f' activations of one batch of {data["batch_size"]}:'
                  f' {_human_bytes(data["activation_bytes_per_batch"])})')
    if data.get("augment"):
        console.print(f' Augmentation (training batches only, in the input pipeline; not in the model):'
                      f' {" -> ".join(data["augment"])}', markup=False, highlight=False)
    if "expected_params" in data:
        if data["params_match"]:
            console.print(f' Published parameter count {data["expected_params"]:,}: [green]matches[/green]')
        else:
            console.print(f' Published parameter count {data["expected_params"]:,}: [red]differs[/red] '
                          f'(built {data["total_params"]:,})')


def text(config: Config, model, precision: str) -> str:
    """The summary as plain text (summary.txt of a run)."""
    import io

    buffer = io.StringIO()
    render(summarize(config, model, precision), Console(file=buffer, width=100, color_system=None))
    return buffer.getvalue()


def for_config(config: Config) -> dict:
    """The summary of a config's model as built by Keras, at the precision `runtime` would choose."""
    from cnnctl import runtime
    from cnnctl.model import build_model

    plan = runtime.plan(config.runtime, runtime.probe_hardware())
    data = summarize(config, build_model(config.model, name=config.name), plan.precision)
    data["precision_reason"] = plan.precision_reason
    return data
