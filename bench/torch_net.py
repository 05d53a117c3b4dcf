"""One PyTorch training-speed measurement of a cnnctl model (run by bench/torch_speed.py, in its own venv).

    bench/.venv-torch/bin/python bench/torch_net.py SPEC.json --variant channels_last --out result.json

Runs with PyTorch (and numpy) only, never inside cnnctl's environment. SPEC.json is written by
bench/torch_speed.py from cnnctl's resolved config: the model's input shape and layers (as in the
YAML: `- LayerType: {keyword: value}`), the optimizer, the loss and the batch size. The layer stack
is translated generically into torch.nn (Conv2D, Dense, pooling, BatchNormalization, activations,
Flatten, Dropout, Rescaling, ...); initialisers, regularisers and names are ignored, since they do not
change the work a step does. A training step is what cnnctl's is: a batch of uint8 images scaled
to [0, 1], a random horizontal flip and a random translation of up to `translate_pixels` (reflect
padding + crop, per image, on the batch tensor as airbench does), forward under autocast, the loss
(cross-entropy with label smoothing), backward, and SGD (Nesterov momentum as configured).

Variants: `nchw` (eager, the default memory format), `channels_last` (eager), `compile`
(channels_last + torch.compile; its compilation happens in the warm-up steps, which are not timed).
After the warm-up steps, whole steps are timed until at least --seconds have passed (and at least
--min-steps steps); images/s = images of those steps / their time. Prints one JSON object (also
written to --out): images/s, step times, versions; on failure an "error" and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

# bench/ holds a profile.py, which would shadow the standard library's (torch._dynamo imports cProfile):
# this script needs nothing from its own folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

VARIANTS = ("nchw", "channels_last", "compile")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}
# Keys that do not change a step's work (or are handled elsewhere): ignored without comment.
IGNORED = {"name", "dtype", "kernel_initializer", "bias_initializer", "depthwise_initializer", "pointwise_initializer",
           "beta_initializer", "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer",
           "kernel_regularizer", "bias_regularizer", "activity_regularizer", "beta_regularizer", "gamma_regularizer",
           "depthwise_regularizer", "pointwise_regularizer", "kernel_constraint", "bias_constraint",
           "beta_constraint", "gamma_constraint", "depthwise_constraint", "pointwise_constraint", "trainable",
           "data_format", "seed", "synchronized", "noise_shape"}


class Unsupported(ValueError):
    """A layer or keyword this translation does not cover (the spec is refused rather than mistranslated)."""


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int | float) else (int(value[0]), int(value[1]))


def activation_module(torch, name: str | None):
    nn = torch.nn
    table = {None: None, "linear": None, "relu": nn.ReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
             "elu": nn.ELU, "selu": nn.SELU, "swish": nn.SiLU, "silu": nn.SiLU, "softplus": nn.Softplus,
             "relu6": nn.ReLU6, "hard_sigmoid": nn.Hardsigmoid, "leaky_relu": lambda: nn.LeakyReLU(0.2),
             "softmax": lambda: nn.Softmax(dim=1), "log_softmax": lambda: nn.LogSoftmax(dim=1)}
    if name not in table:
        raise Unsupported(f"activation {name!r}")
    make = table[name]
    return make() if make else None


def build(torch, spec: dict):
    """(nn.Sequential of the layers, {ignored keyword: [layer indices]}, number of outputs)."""
    nn, F = torch.nn, torch.nn.functional

    class Scale(nn.Module):
        def __init__(self, scale, offset):
            super().__init__()
            self.scale, self.offset = float(scale), float(offset)

        def forward(self, x):
            return x * self.scale + self.offset if self.offset else x * self.scale

    class Global(nn.Module):
        def __init__(self, kind, keepdims):
            super().__init__()
            self.kind, self.keepdims = kind, keepdims

        def forward(self, x):
            x = x.mean((2, 3), keepdim=True) if self.kind == "avg" else x.amax((2, 3), keepdim=True)
            return x if self.keepdims else x.flatten(1)

    class Pad(nn.Module):
        def __init__(self, padding):
            super().__init__()
            if isinstance(padding, int):
                top = bottom = left = right = padding
            elif isinstance(padding[0], int):
                (top, left), (bottom, right) = padding, padding
            else:
                (top, bottom), (left, right) = padding
            self.pad = (left, right, top, bottom)

        def forward(self, x):
            return F.pad(x, self.pad)

    h, w, c = spec["input_shape"]
    probe = torch.zeros(2, c, h, w)  # follows the shapes as layers are added (2: BatchNorm needs > 1 value)
    modules, notes = [], {}  # notes: ignored keyword -> the indices of the layers that had it
    for index, entry in enumerate(spec["layers"]):
        (kind, args), = entry.items()
        args = dict(args or {})
        where = f"layers[{index}] {kind}"
        frozen = args.get("trainable") is False
        unknown = set()
        if kind in ("Conv2D", "DepthwiseConv2D"):
            depthwise = kind == "DepthwiseConv2D"
            in_ch = probe.shape[1]
            out = in_ch * int(args.get("depth_multiplier", 1)) if depthwise else int(args["filters"])
            padding = args.get("padding", "valid")
            strides, dilation = _pair(args.get("strides", 1)), _pair(args.get("dilation_rate", 1))
            if padding == "same" and strides != (1, 1):
                raise Unsupported(f"{where}: padding same with strides {strides}")
            groups = in_ch if depthwise else int(args.get("groups", 1))
            layer = nn.Conv2d(in_ch, out, _pair(args["kernel_size"]), stride=strides, padding=padding,
                              dilation=dilation, groups=groups, bias=bool(args.get("use_bias", True)))
            block = [layer]
            if act := activation_module(torch, args.get("activation")):
                block.append(act)
            unknown = set(args) - {"filters", "kernel_size", "padding", "strides", "dilation_rate", "groups",
                                   "use_bias", "activation", "depth_multiplier"}
        elif kind == "Dense":
            if probe.dim() != 2:
                raise Unsupported(f"{where}: Dense on a {probe.dim()}-d input (put a Flatten or global pooling first)")
            block = [nn.Linear(probe.shape[1], int(args["units"]), bias=bool(args.get("use_bias", True)))]
            if act := activation_module(torch, args.get("activation")):
                block.append(act)
            unknown = set(args) - {"units", "use_bias", "activation"}
        elif kind in ("MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D"):
            pool = _pair(args.get("pool_size", 2))
            strides = _pair(args["strides"]) if args.get("strides") is not None else pool
            if args.get("padding", "valid") != "valid":
                raise Unsupported(f"{where}: padding {args['padding']!r} (only valid)")
            block = [(nn.MaxPool2d if kind.startswith("Max") else nn.AvgPool2d)(pool, stride=strides)]
            unknown = set(args) - {"pool_size", "strides", "padding"}
        elif kind in ("GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPooling2D", "GlobalMaxPool2D"):
            block = [Global("avg" if "Av" in kind else "max", bool(args.get("keepdims", False)))]
            unknown = set(args) - {"keepdims"}
        elif kind == "ZeroPadding2D":
            block = [Pad(args.get("padding", 1))]
            unknown = set(args) - {"padding"}
        elif kind == "BatchNormalization":
            if args.get("axis", -1) not in (-1, probe.dim() - 1):
                raise Unsupported(f"{where}: axis {args['axis']}")
            scale, center = bool(args.get("scale", True)), bool(args.get("center", True))
            norm = (nn.BatchNorm2d if probe.dim() == 4 else nn.BatchNorm1d)(
                probe.shape[1], eps=float(args.get("epsilon", 1e-3)),
                momentum=1.0 - float(args.get("momentum", 0.99)), affine=scale or center)
            if not scale and center:
                norm.weight.requires_grad_(False)  # gamma fixed at 1, as Keras' scale: false (and airbench)
            if scale and not center:
                norm.bias.requires_grad_(False)
            block = [norm]
            unknown = set(args) - {"scale", "center", "momentum", "epsilon", "axis"}
        elif kind == "LayerNormalization":
            norm = nn.LayerNorm(probe.shape[-1], eps=float(args.get("epsilon", 1e-3)))
            if probe.dim() == 4:
                raise Unsupported(f"{where}: LayerNormalization on images (channels-first layout here)")
            block = [norm]
            unknown = set(args) - {"epsilon", "axis", "center", "scale"}
        elif kind == "Activation":
            block = [m for m in [activation_module(torch, args.get("activation"))] if m]
            unknown = set(args) - {"activation"}
        elif kind == "ReLU":
            if args.get("max_value") is not None or args.get("threshold", 0) or args.get("negative_slope", 0):
                raise Unsupported(f"{where}: ReLU with max_value, threshold or negative_slope")
            block = [nn.ReLU()]
            unknown = set(args) - {"max_value", "threshold", "negative_slope"}
        elif kind == "LeakyReLU":
            block = [nn.LeakyReLU(float(args.get("negative_slope", args.get("alpha", 0.3))))]
            unknown = set(args) - {"negative_slope", "alpha"}
        elif kind == "Softmax":
            block = [nn.Softmax(dim=1)]
            unknown = set(args) - {"axis"}
        elif kind in ("Dropout", "SpatialDropout2D"):
            rate = float(args.get("rate", 0.5))
            block = [nn.Dropout2d(rate) if kind == "SpatialDropout2D" else nn.Dropout(rate)]
            unknown = set(args) - {"rate"}
        elif kind == "Flatten":
            block = [nn.Flatten()]
        elif kind == "Rescaling":
            block = [Scale(args.get("scale", 1.0), args.get("offset", 0.0))]
            unknown = set(args) - {"scale", "offset"}
        else:
            raise Unsupported(f"{where}: no translation for this layer type")
        if unknown - IGNORED:
            raise Unsupported(f"{where}: keyword(s) {', '.join(sorted(unknown - IGNORED))}")
        for key in sorted(set(args) & IGNORED - {"name", "trainable"}):
            notes.setdefault(key, []).append(index)
        for module in block:
            if frozen:
                for parameter in module.parameters():
                    parameter.requires_grad_(False)
            probe = module.eval()(probe) if isinstance(module, nn.Dropout | nn.Dropout2d) else module(probe)
            modules.append(module)
    model = nn.Sequential(*modules).train()
    if probe.dim() != 2:
        raise Unsupported(f"the model ends with a {probe.dim()}-d output {tuple(probe.shape)}, not (batch, classes)")
    return model, notes, int(probe.shape[1])


def make_optimizer(torch, spec: dict, parameters):
    """SGD (momentum, Nesterov), Adam or AdamW with the config's arguments; the learning rate's value and
    schedule do not change a step's work. Keras' weight decay is decoupled; torch's SGD adds it to the
    gradient: the same work."""
    name, lr = spec.get("name", "sgd"), float(spec.get("learning_rate", 0.001))
    decay = float(spec.get("weight_decay") or 0.0)
    if name == "sgd":
        momentum = float(spec.get("momentum") or 0.0)
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=bool(spec.get("nesterov")) and momentum > 0,
                               weight_decay=decay)
    if name in ("adam", "adamw"):
        betas = (float(spec.get("beta_1") or 0.9), float(spec.get("beta_2") or 0.999))
        kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return kind(parameters, lr=lr, betas=betas, eps=float(spec.get("epsilon") or 1e-7), weight_decay=decay,
                    amsgrad=bool(spec.get("amsgrad")))
    raise Unsupported(f"optimizer {name!r} (sgd, adam and adamw are translated)")


def augment(torch, images, pad: int, flip: bool):
    """airbench's batch_flip_lr and batch_crop on a float NCHW batch: each image flipped with probability 1/2,
    then shifted by a whole number of pixels in [-pad, pad] in both axes (borders reflected)."""
    if flip:
        images = torch.where(torch.rand(len(images), 1, 1, 1) < 0.5, images.flip(-1), images)
    if pad <= 0:
        return images
    size_h, size_w = images.shape[-2:]
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    shifts = torch.randint(-pad, pad + 1, size=(len(images), 2))
    out = torch.empty_like(images)
    for sy in range(-pad, pad + 1):
        for sx in range(-pad, pad + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            out[mask] = padded[mask, :, pad + sy:pad + sy + size_h, pad + sx:pad + sx + size_w]
    return out


def measure(args, spec: dict) -> dict:
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    result = {"variant": args.variant, "precision": args.precision, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": platform.python_version(),
              "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: None)(),
              "mkldnn": torch.backends.mkldnn.is_available()}
    model, notes, classes = build(torch, spec)
    result["ignored"] = notes
    result["parameters"] = sum(p.numel() for p in model.parameters())
    result["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    channels_last = args.variant in ("channels_last", "compile")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(torch, spec["optimizer"], [p for p in model.parameters() if p.requires_grad])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=float(spec.get("label_smoothing", 0.0)))
    batch = int(spec["batch_size"])
    h, w, c = spec["input_shape"]
    # uint8 images kept as cnnctl keeps them (N, H, W, C); labels in [0, classes).
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.train_images, h, w, c), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (args.train_images,), generator=generator)
    steps_per_epoch = args.train_images // batch
    if steps_per_epoch < 1:
        raise ValueError(f"--train-images {args.train_images} is less than one batch of {batch}")
    step_fn_model = model
    if args.variant == "compile":
        step_fn_model = torch.compile(model)
    dtype = getattr(torch, DTYPES[args.precision]) if DTYPES[args.precision] else None
    pad, flip = int(spec.get("translate_pixels", 0)), bool(spec.get("flip", False))
    order = torch.randperm(args.train_images)
    position = 0

    def step():
        nonlocal order, position
        if position + batch > args.train_images:  # whole batches only, a new order each epoch
            order, position = torch.randperm(args.train_images), 0
        index = order[position:position + batch]
        position += batch
        x = images[index].permute(0, 3, 1, 2).float().div_(255.0)  # NHWC uint8 -> N,C,H,W view, channels-last strides
        x = augment(torch, x, pad, flip).contiguous(memory_format=memory_format)
        y = labels[index]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = step_fn_model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    started = time.perf_counter()
    warmup = []
    for _ in range(args.warmup_steps):
        t = time.perf_counter()
        loss = step()
        warmup.append(time.perf_counter() - t)
    result["warmup_steps"] = len(warmup)
    result["warmup_step_seconds"] = [round(s, 3) for s in warmup]
    result["warmup_seconds"] = round(time.perf_counter() - started, 2)
    times = []
    window = time.perf_counter()
    while not times or len(times) < args.min_steps or time.perf_counter() - window < args.seconds:
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - window
    final_loss = float(loss)
    if not math.isfinite(final_loss):
        raise FloatingPointError(f"the loss is {final_loss} after {len(times)} timed steps")
    result.update(batch_size=batch, train_images=args.train_images, timed_steps=len(times),
                  timed_images=len(times) * batch, timed_seconds=round(elapsed, 3),
                  images_per_second=round(len(times) * batch / elapsed, 1),
                  median_step_seconds=round(statistics.median(times), 4),
                  images_per_second_median_step=round(batch / statistics.median(times), 1),
                  final_loss=round(final_loss, 4), classes=classes)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="JSON written by bench/torch_speed.py")
    p.add_argument("--variant", choices=VARIANTS, required=True)
    p.add_argument("--precision", choices=tuple(DTYPES), default="bf16", help="autocast dtype (fp32: no autocast)")
    p.add_argument("--train-images", type=int, default=30720)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20.0, help="timed window: at least this long, whole steps")
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    with open(args.spec) as handle:
        spec = json.load(handle)
    try:
        result, status = measure(args, spec), 0
    except Exception as exc:  # reported as data: the harness records it and goes on
        result = {"variant": args.variant, "precision": args.precision,
                  "error": f"{type(exc).__name__}: {exc}".strip()[:2000],
                  "traceback": traceback.format_exc()[-4000:]}
        status = 1
    text = json.dumps(result)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
