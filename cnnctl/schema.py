"""The experiment config: typed, validated once when loaded, frozen afterwards.

Each section is consumed by one module: `data` by data.py, `model` by model.py, `train` by
train.py, `runtime` by runtime.py. `cnnctl schema` prints `Config.model_json_schema()`.
No TensorFlow here.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

from cnnctl.layers import Augmentation, Layer, LayerEntry

PosInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
def _no_parent_reference(name: str) -> str:
    if ".." in name:
        raise ValueError(f"a run name must not contain '..', got {name!r}")
    return name


RunName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"),
                    AfterValidator(_no_parent_reference)]  # the names rundir.check_name accepts


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# ---------------------------------------------------------------- data


class SyntheticData(Section):
    train_examples: Annotated[int, Field(gt=0, le=1_000_000)] = 512
    """Number of random training images."""
    test_examples: Annotated[int, Field(gt=0, le=1_000_000)] = 128
    """Number of random test images."""


class DataSplit(Section):
    """How one folder of class folders (or a CSV without a split column) is split, per class (stratified)."""

    val: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    """Fraction of each class held out for validation (used when train.validation is split)."""
    test: Fraction = 0.1
    """Fraction of each class held out for the test set."""
    seed: int = 0
    """Seed of the split (not the run's seed: runs with other seeds are tested on the same images)."""

    @model_validator(mode="after")
    def _leaves_training_images(self) -> DataSplit:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val {self.val} + test {self.test} leaves no training images (their sum must be < 1)")
        return self


class DataConfig(Section):
    dataset: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "directory", "csv", "npz", "synthetic"]
    """Built-in dataset, an image folder (`directory`), a CSV of path,label (`csv`), arrays in a file (`npz`), or seeded random data."""
    root: str | None = None
    """Where to look for the files first: a folder with the Keras file names, the image folder, the CSV or the .npz file."""
    split: DataSplit | None = None
    """Image folders without train/ and test/ (root/<class>/*) and CSVs without a split column: the fractions held out (default val 0.1, test 0.1)."""
    resize: Literal["stretch", "crop", "pad"] = "stretch"
    """Images of another size than model.input_shape: stretch to it, crop the centre to its aspect ratio, or pad with black to it, then resize."""
    skip_bad_files: bool = False
    """Unreadable, empty or oversized images: false refuses to start and lists them all; true skips them (counted in the manifest)."""
    augment: Annotated[list[Augmentation], Field(max_length=50)] = []
    """Keras preprocessing layers applied in order to training batches only (seeded by seed, epoch and step): RandomFlip, RandomTranslation, RandomRotation, RandomZoom, RandomContrast, RandomBrightness, RandomErasing, MixUp, CutMix."""
    max_image_pixels: Annotated[int, Field(gt=0)] = 89_478_485
    """Images whose header claims more pixels than this are refused (decompression bombs); Pillow's own limit by default."""

    @model_validator(mode="after")
    def _split_is_for_image_files(self) -> DataConfig:
        if self.split is not None and self.dataset not in ("directory", "csv"):
            raise ValueError(f"split applies to image folders and CSVs (directory, csv), not to {self.dataset}")
        return self
    num_classes: Annotated[int, Field(gt=1, le=100_000)] | None = None
    """Number of classes; taken from the dataset (or the last layer for synthetic data) when unset."""
    class_names: list[str] | None = None
    """Names of the classes, in label order; built-in datasets and image folders know their own."""
    cifar100_label_mode: Literal["fine", "coarse"] = "fine"
    """CIFAR-100 only: 100 fine or 20 coarse labels."""
    synthetic: SyntheticData = SyntheticData()
    """Sizes of the synthetic dataset (also used by --smoke)."""
    cache: bool = True
    """Keep decoded images on disk ($CNNCTL_CACHE, default ~/.cache/cnnctl; one .npy per split, read through a memory map) so decoding happens once; false decodes into a temporary file every run."""


# ---------------------------------------------------------------- model


class ModelConfig(Section):
    input_shape: Annotated[list[Annotated[int, Field(gt=0, le=8192)]], Field(min_length=1, max_length=3)]
    """Height, width and channels of one image, e.g. [32, 32, 3]."""
    layers: Annotated[list[Layer], Field(min_length=1, max_length=1000)]
    """Keras layers in order, each `- LayerType: {keyword: value}`."""

    @property
    def entries(self) -> list[LayerEntry]:
        return list(self.layers)


# ---------------------------------------------------------------- train


class ConstantSchedule(Section):
    type: Literal["constant"]


class InverseTimeSchedule(Section):
    """lr / (1 + decay_rate * step / decay_steps): Keras 2's legacy `decay=` argument is decay_steps 1."""

    type: Literal["inverse_time"]
    decay_rate: Annotated[float, Field(ge=0)]
    decay_steps: PosInt = 1
    staircase: bool = False


class ExponentialSchedule(Section):
    type: Literal["exponential"]
    decay_rate: Annotated[float, Field(gt=0, le=1)]
    decay_steps: PosInt
    staircase: bool = False


class CosineSchedule(Section):
    type: Literal["cosine"]
    decay_steps: PosInt | None = None
    """Steps over which to decay; unset means the whole run (epochs x steps per epoch)."""
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0


class PiecewiseLinearSchedule(Section):
    """learning_rate x a factor interpolated linearly between points (fraction of the run's steps, factor):
    [[0, 0.2], [0.23, 1], [1, 0.07]] is airbench's triangle; [[0, 0], [0.3, 1], [1, 0]] a one-cycle."""

    type: Literal["piecewise_linear"]
    points: Annotated[list[tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=100)]]],
                      Field(min_length=2, max_length=100)]
    """[fraction of all training steps, factor] pairs, fractions increasing from 0 to 1."""

    @field_validator("points")
    @classmethod
    def _from_start_to_end(cls, points: list) -> list:
        fractions = [f for f, _ in points]
        if fractions[0] != 0 or fractions[-1] != 1:
            raise ValueError(f"the points must run from fraction 0 to fraction 1, got {fractions[0]:g} to "
                             f"{fractions[-1]:g}")
        if any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
            raise ValueError(f"the fractions must increase, got {', '.join(f'{f:g}' for f in fractions)}")
        return points


Schedule = Annotated[
    Union[ConstantSchedule, InverseTimeSchedule, ExponentialSchedule, CosineSchedule,  # noqa: UP007
          PiecewiseLinearSchedule],
    Field(discriminator="type"),
]

# The keyword arguments each optimizer's Keras constructor takes (tests check them against Keras).
OPTIMIZER_ARGS: dict[str, set[str]] = {
    "sgd": {"momentum", "nesterov"},
    "rmsprop": {"rho", "momentum", "epsilon", "centered"},
    "adam": {"beta_1", "beta_2", "epsilon", "amsgrad"},
    "adamw": {"beta_1", "beta_2", "epsilon", "amsgrad"},
    "adagrad": {"initial_accumulator_value", "epsilon"},
    "adadelta": {"rho", "epsilon"},
    "adamax": {"beta_1", "beta_2", "epsilon"},
    "nadam": {"beta_1", "beta_2", "epsilon"},
    "muon": {"momentum", "nesterov", "ns_steps", "rms_rate", "normalize_weights"},  # cnnctl.muon.Muon
}
COMMON_OPTIMIZER_ARGS = {"name", "learning_rate", "schedule", "weight_decay", "clipnorm", "clipvalue",
                         "global_clipnorm"}  # fmt: skip
CNNCTL_OPTIMIZER_ARGS = {"exclude_from_weight_decay", "groups", "ema"}  # cnnctl's, for every optimizer


class OptimizerSettings(Section):
    """An optimizer's kind and settings: the main one's (OptimizerConfig), or a parameter group's own."""

    name: Literal["sgd", "rmsprop", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "muon"]
    """muon: Keras' Muon with convolution kernels orthogonalised too (cnnctl.muon); rank-0/1 variables get AdamW."""
    learning_rate: Annotated[float, Field(gt=0, le=10000)] = 0.001
    """Initial learning rate (the schedule starts from it). Keras' losses are batch means: a recipe's rate for
    a summed loss is that rate times the batch size."""
    schedule: Schedule | None = None
    """Optional learning-rate schedule: constant, inverse_time, exponential or cosine."""
    momentum: Annotated[float, Field(ge=0, lt=1)] | None = None
    nesterov: bool | None = None
    rho: Annotated[float, Field(ge=0, lt=1)] | None = None
    centered: bool | None = None
    epsilon: Annotated[float, Field(gt=0)] | None = None
    beta_1: Annotated[float, Field(ge=0, lt=1)] | None = None
    beta_2: Annotated[float, Field(ge=0, lt=1)] | None = None
    amsgrad: bool | None = None
    initial_accumulator_value: Annotated[float, Field(ge=0)] | None = None
    ns_steps: Annotated[int, Field(ge=1, le=20)] | None = None
    """muon: Newton-Schulz iterations per step (Keras' default 5; airbench94_muon 3)."""
    rms_rate: Annotated[float, Field(ge=0)] | None = None
    """muon: scale updates by sqrt(larger side) * rms_rate (Keras' default 0.2); 0: no scaling, as Jordan's Muon."""
    normalize_weights: bool | None = None
    """muon: rescale each kernel to norm sqrt(output channels) before its step (airbench94_muon)."""
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    clipnorm: Annotated[float, Field(gt=0)] | None = None
    clipvalue: Annotated[float, Field(gt=0)] | None = None
    global_clipnorm: Annotated[float, Field(gt=0)] | None = None
    exclude_from_weight_decay: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=100)] = []
    """Variables not decayed: substrings of their names, e.g. [beta, bias]."""
    @model_validator(mode="after")
    def _args_fit_optimizer(self) -> OptimizerSettings:
        allowed = OPTIMIZER_ARGS[self.name] | COMMON_OPTIMIZER_ARGS | CNNCTL_OPTIMIZER_ARGS
        wrong = sorted(k for k in self.model_fields_set if k not in allowed)
        if wrong:
            raise ValueError(
                f"{self.name} does not take {', '.join(wrong)} (it takes "
                f"{', '.join(sorted(allowed - {'name'} - CNNCTL_OPTIMIZER_ARGS))}, and ema, groups and "
                "exclude_from_weight_decay)"
            )
        clips = [k for k in ("clipnorm", "clipvalue", "global_clipnorm") if getattr(self, k) is not None]
        if len(clips) > 1:  # Keras' optimizer constructor refuses more than one
            raise ValueError(f"set only one of clipnorm, clipvalue and global_clipnorm, got {' and '.join(clips)}")
        return self

    def keras_kwargs(self) -> dict:
        """Constructor arguments other than the learning rate, exactly as set."""
        skip = {"name", "learning_rate", "schedule", "groups", "ema", "exclude_from_weight_decay"}
        return {k: getattr(self, k) for k in self.model_fields_set if k not in skip}


class ParameterGroup(Section):
    """Variables whose learning rate (and weight decay) differ from the rest, e.g. BatchNorm biases."""

    match: Annotated[str, Field(min_length=1, max_length=200)]
    """A regular expression that must match a variable's whole `layer/variable` name, e.g.
    `batch_normalization.*/beta`; each variable may match at most one group."""
    lr_multiplier: Annotated[float, Field(ge=0, le=10000)] = 1.0
    """The group's learning rate is the optimizer's (with its schedule) times this; 0 freezes the variables."""
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    """The group's decoupled weight decay (default: the optimizer's)."""
    optimizer: OptimizerSettings | None = None
    """The group's own optimizer (e.g. muon for the convolution kernels), instead of a multiplier: its own
    learning rate, weight decay and settings; its schedule, if it has none, is the main optimizer's shape.
    It has no groups or ema of its own: the main optimizer's ema averages every group."""

    @model_validator(mode="after")
    def _own_optimizer_or_multiplier(self) -> ParameterGroup:
        if self.optimizer is None:
            return self
        # by value, not by what was set: the resolved config written to a run writes the defaults out
        both = [k for k, v in (("lr_multiplier", self.lr_multiplier != 1.0), ("weight_decay", self.weight_decay
                                                                              is not None)) if v]
        if both:
            raise ValueError(f"a group with its own optimizer takes no {' or '.join(both)} (set the optimizer's "
                             "learning_rate and weight_decay)")
        return self

    @field_validator("match")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return pattern


class EmaConfig(Section):
    """Weight averaging (Keras' use_ema): an exponential moving average of the weights, updated every step.
    Validation, the checkpoints, evaluation and exports use the averaged weights; resume keeps the average."""

    momentum: Annotated[float, Field(gt=0, lt=1)] = 0.99
    overwrite_every: Annotated[int, Field(gt=0, le=1_000_000)] | None = None
    """Copy the average into the weights training continues from every this many steps (lookahead)."""
    ramp: Annotated[float, Field(ge=0, le=10)] = 0
    """Grow the momentum with training: momentum * (step / total steps) ** ramp (0: constant). airbench's
    lookahead, per step: momentum 0.95, overwrite_every 5, ramp 0.6."""


class OptimizerConfig(OptimizerSettings):
    """The optimizer: its settings, parameter groups and weight averaging."""

    groups: Annotated[list[ParameterGroup], Field(max_length=20)] = []
    """Parameter groups with their own learning-rate multiplier and weight decay."""
    ema: EmaConfig | None = None
    """Average the weights (exponential moving average, optionally lookahead)."""


class EarlyStoppingConfig(Section):
    monitor: str = "val_loss"
    min_delta: Annotated[float, Field(ge=0)] = 0.0
    patience: Annotated[int, Field(ge=0)] = 0
    mode: Literal["auto", "min", "max"] = "auto"
    restore_best_weights: bool = False
    start_from_epoch: Annotated[int, Field(ge=0)] = 0


class ReduceLROnPlateauConfig(Section):
    monitor: str = "val_loss"
    factor: Fraction = 0.1
    patience: Annotated[int, Field(ge=0)] = 10
    min_delta: Annotated[float, Field(ge=0)] = 1e-4
    cooldown: Annotated[int, Field(ge=0)] = 0
    min_lr: Annotated[float, Field(ge=0)] = 0.0
    mode: Literal["auto", "min", "max"] = "auto"


class CallbacksConfig(Section):
    early_stopping: EarlyStoppingConfig | None = None
    """Keras EarlyStopping with these arguments (unset: train every epoch)."""
    reduce_lr_on_plateau: ReduceLROnPlateauConfig | None = None
    """Keras ReduceLROnPlateau with these arguments."""
    terminate_on_nan: bool = True
    """Stop, and mark the run failed, when the loss becomes NaN or infinite."""


LossName = Literal["categorical_crossentropy", "sparse_categorical_crossentropy"]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)


class LossConfig(Section):
    """A loss with its options; a plain name (`loss: categorical_crossentropy`) is this with the defaults."""

    name: LossName
    """categorical_crossentropy (one-hot labels, made per batch) or sparse_categorical_crossentropy (class indices): the same result."""
    from_logits: bool = False
    """true: the last layer has no softmax, its outputs are logits; evaluation, predict and export add the softmax."""
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Train on y * (1 - s) + s / classes instead of one-hot y (labels are made one-hot for it, also for the sparse name)."""

    @property
    def plain(self) -> bool:
        """No options: what the bare name means (and how it is written back)."""
        return not self.from_logits and self.label_smoothing == 0


class TrainConfig(Section):
    optimizer: OptimizerConfig
    loss: LossConfig = Field(LossConfig(name="sparse_categorical_crossentropy"),
                             json_schema_extra={"default": "sparse_categorical_crossentropy"})
    """A name, categorical_crossentropy or sparse_categorical_crossentropy (the same result), or {name, from_logits, label_smoothing}."""
    metrics: list[Literal["accuracy", "top_k_accuracy"]] = ["accuracy"]
    top_k: Annotated[int, Field(gt=1, le=100)] = 5
    """k of top_k_accuracy (in training metrics and in the evaluation report)."""
    batch_size: Annotated[int, Field(gt=0, le=65536)] = 32
    """Global batch size (split across replicas under a distribution strategy)."""
    epochs: Annotated[int, Field(gt=0, le=100_000)] = 1
    validation: Literal["none", "split", "test"] = "none"
    """none; split: hold out validation_split of the training set (seeded); test: validate on the test set."""
    validation_split: Fraction = 0.2
    monitor: str = "val_accuracy"
    """Metric that picks checkpoints/best.keras (with no validation: the last epoch is the best)."""
    callbacks: CallbacksConfig = CallbacksConfig()
    checkpoint_every_steps: PosInt | None = None
    """Also write a resume checkpoint every N training steps."""
    shuffle: bool = True
    class_weight: Literal["auto"] | dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None
    """Weigh each class's loss: auto (inverse frequency, as scikit-learn's "balanced") or a weight per class name (missing classes: 1)."""

    @field_validator("loss", mode="before", json_schema_input_type=LossName | LossConfig)
    @classmethod
    def _loss_name_or_mapping(cls, value):
        """A plain name is the mapping of that name; an unknown one is refused as a name, not as a mapping."""
        if isinstance(value, str):
            if value not in LOSS_NAMES:
                raise PydanticCustomError("literal_error", "Input should be {expected}",
                                          {"expected": " or ".join(repr(name) for name in LOSS_NAMES)})
            return {"name": value}
        if not isinstance(value, dict | LossConfig):
            raise ValueError(f"must be a loss name ({', '.join(LOSS_NAMES)}) or a mapping {{name: ..., "
                             f"from_logits: ..., label_smoothing: ...}}, got {type(value).__name__}")
        return value

    @field_serializer("loss")
    def _loss_as_written(self, loss: LossConfig):  # the bare name while it has no options: configs keep their text
        return loss.name if loss.plain else {"name": loss.name, "from_logits": loss.from_logits,
                                             "label_smoothing": loss.label_smoothing}

    @field_validator("class_weight", mode="before")
    @classmethod
    def _class_names_are_text(cls, value):  # YAML reads the key of {0: 2.0} (MNIST's class "0") as a number
        return {str(key): weight for key, weight in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _monitor_needs_validation(self) -> TrainConfig:
        if self.validation == "none":
            for path, cb in (("callbacks.early_stopping", self.callbacks.early_stopping),
                             ("callbacks.reduce_lr_on_plateau", self.callbacks.reduce_lr_on_plateau)):
                if cb is not None and cb.monitor.startswith("val_"):
                    shown = repr(cb.monitor) if len(cb.monitor) <= 100 else f"{cb.monitor[:100]!r}…"
                    raise ValueError(f"{path} monitors {shown} but validation is 'none'")
        return self


# ---------------------------------------------------------------- runtime


class RuntimeConfig(Section):
    device: Annotated[str, Field(pattern=r"^(auto|cpu|gpu|gpu:\d{1,3})$")] = "auto"
    """auto (the first GPU if any, else the CPU), cpu, gpu or gpu:N."""
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    """auto: mixed_float16 on NVIDIA GPUs of compute capability >= 7.0, mixed_bfloat16 on CPUs with AVX512_BF16 or AMX, else float32."""
    jit_compile: Literal["auto"] | bool = "auto"
    """XLA: auto turns it on for GPUs only (on CPUs it is slower)."""
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    """tf.distribute strategy; multi_worker reads TF_CONFIG."""
    devices: list[Annotated[str, Field(pattern=r"^(cpu|gpu):\d{1,3}$")]] | None = None
    """For mirrored: the devices to use (default: every local GPU)."""
    deterministic: bool = False
    """Seed everything and enable TensorFlow op determinism: identical metrics for identical runs."""
    steps_per_execution: Literal["auto"] | Annotated[int, Field(gt=0, le=10_000)] = "auto"
    """Training steps per tf.function call: fewer Python round trips, the same batches and results. auto: the largest divisor of an epoch's steps (and of train.checkpoint_every_steps) up to 16, 1 under tf.distribute; a number must divide them."""


# ---------------------------------------------------------------- expect


class ExpectConfig(Section):
    params: Annotated[int, Field(ge=0)] | None = None
    """Published total parameter count."""
    test_accuracy: Probability | None = None
    """Published test accuracy."""
    val_accuracy: Probability | None = None
    """Published validation accuracy (last epoch)."""
    source: str | None = None
    """Where the figures were published."""


# ---------------------------------------------------------------- evaluate


class EvaluateConfig(Section):
    """How the test set is evaluated (by train at its end, and by `cnnctl evaluate`)."""

    tta: Annotated[list[Literal["flip", "translate"]], Field(max_length=2)] = []
    """Test-time augmentation: average the predicted probabilities of these views of each test image: flip (it and its mirror image, equally), translate (it at half weight, shifted by translate_pixels down-right and up-left at a quarter each, reflect-padded)."""
    translate_pixels: Annotated[int, Field(gt=0, le=64)] = 1
    """How far translate shifts (in both axes); smaller than the image."""

    @field_validator("tta")
    @classmethod
    def _each_view_once(cls, views: list[str]) -> list[str]:
        if len(set(views)) != len(views):
            raise ValueError(f"lists a view twice: {views}")
        return views


# ---------------------------------------------------------------- tune


Scalar = bool | int | float | str | None


class Dimension(Section):
    """One searched config value: exactly one of uniform, log_uniform, int, choice."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, populate_by_name=True,
                              allow_inf_nan=False)

    uniform: tuple[float, float] | None = None
    """[low, high]: a float drawn uniformly."""
    log_uniform: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    """[low, high], both > 0: a float drawn uniformly on a log scale (learning rates)."""
    integer: tuple[int, int] | None = Field(None, alias="int")
    """[low, high]: an integer (both ends included); `step` spaces them."""
    step: Annotated[float, Field(gt=0)] | None = None
    """For int and uniform: only values low, low + step, ... (an int's step must be whole)."""
    choice: Annotated[list[Scalar | list[Scalar]], Field(min_length=1, max_length=1000)] | None = None
    """The values to choose from (numbers, strings, booleans, or lists such as a kernel size)."""

    @field_validator("choice", mode="before")
    @classmethod
    def _plain_choices(cls, value):
        """One short message per bad choice, not one per member of the union of types a choice may take."""
        if isinstance(value, list):
            for index, item in enumerate(value):
                items = item if isinstance(item, list) else [item]
                if not all(isinstance(i, bool | int | float | str) or i is None for i in items):
                    raise ValueError(f"choice[{index}] must be a number, a string, a boolean, null or a list of "
                                     f"them, got {type(item).__name__}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        kinds = [k for k in ("uniform", "log_uniform", "integer", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            given = ", ".join("int" if k == "integer" else k for k in kinds) or "none"
            raise ValueError(f"give exactly one of uniform, log_uniform, int, choice (given: {given})")
        bounds = getattr(self, kinds[0])
        if kinds[0] != "choice" and not bounds[0] < bounds[1]:
            raise ValueError(f"low must be below high, got {list(bounds)}")
        if self.step is not None and kinds[0] not in ("uniform", "integer"):
            raise ValueError("step applies to int and uniform only")
        if self.step is not None and kinds[0] == "integer" and self.step != int(self.step):
            raise ValueError(f"an int's step must be a whole number, got {self.step}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("uniform", "log_uniform", "integer", "choice") if getattr(self, k) is not None)

    def extremes(self) -> list:
        """The values that bound what this dimension can propose (checked before the first trial)."""
        if self.choice is not None:
            return list(self.choice)
        low, high = getattr(self, self.kind)
        if self.kind == "integer" and self.step:
            high = low + (high - low) // int(self.step) * int(self.step)
        return [low, high]


class TuneConfig(Section):
    metric: str = "val_accuracy"
    """What the search optimises: a column of metrics.csv (val_accuracy, val_loss, ...; its best epoch), or test_accuracy / test_loss."""
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    """auto: maximize accuracies and F1, minimize losses."""
    trials: Annotated[int, Field(gt=0, le=100_000)] = 20
    """Completed or pruned trials the study runs to (failed trials are retried and do not count)."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    """Seed of the sampler (default: the config's seed); with one worker the same trials are proposed."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """tpe (Optuna's default), random, or grid (every dimension a choice or a stepped int)."""
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    """Stop unpromising trials early from the per-epoch metric (none: every trial runs all epochs)."""
    space: Annotated[dict[str, Dimension], Field(min_length=1, max_length=100)]
    """Dotted config keys, as --set takes them, mapped to their ranges: {train.optimizer.learning_rate: {log_uniform: [1e-4, 1e-1]}}."""


# ---------------------------------------------------------------- tracking


class MlflowConfig(Section):
    uri: str | None = None
    """Tracking store: unset for SQLite in the runs directory (runs/mlflow.db), or http://host:5000 for a server."""
    experiment: str | None = None
    """MLflow experiment name (default: the config's name)."""
    log_models: bool = False
    """Also upload checkpoints/best.keras."""


class TrackingConfig(Section):
    mlflow: MlflowConfig | None = None
    """Log the run to MLflow (needs the mlflow extra: pip install 'cnnctl[mlflow]')."""


class Config(Section):
    """A cnnctl experiment."""

    name: RunName
    """Run name (the run directory is runs/<name>, <name>-2, ...)."""
    description: str | None = None
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed for weights, shuffling, validation split and synthetic data."""
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    runtime: RuntimeConfig = RuntimeConfig()
    expect: ExpectConfig | None = None
    evaluate: EvaluateConfig | None = None
    """Test-time augmentation of the evaluation (default: none)."""
    tune: TuneConfig | None = None
    """The search space of `cnnctl tune` (ignored by `cnnctl train`)."""
    tracking: TrackingConfig | None = None
    """Experiment tracking (MLflow)."""


def json_schema() -> dict:
    """The JSON Schema of a config, for editors; it accepts what the loader accepts.

    Besides `- Conv2D: {...}`, a layer without required arguments may be written bare
    (`- Flatten`) or with nothing after the colon (`- Flatten:`).
    """
    from cnnctl.layers import LAYER_TYPES

    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cnnctl experiment config"
    definitions = schema["$defs"]
    bare = []
    for name, (args, _) in LAYER_TYPES.items():
        entry = definitions.get(f"{name}Layer")
        if entry is None:
            continue
        entry["minProperties"] = 1
        entry["properties"][name] = {"anyOf": [entry["properties"][name], {"type": "null"}]}
        if not any(field.is_required() for field in args.model_fields.values()):
            bare.append(name)
    items = definitions["ModelConfig"]["properties"]["layers"]["items"]
    items["oneOf"].append({"enum": bare})
    return schema
