"""Parameter groups (learning-rate multipliers, their own weight decay or optimizer) and weight averaging (EMA,
lookahead)."""

from __future__ import annotations

import numpy as np
import pytest

from cnnctl.errors import ConfigError
from cnnctl.schema import ModelConfig, OptimizerConfig

STACK = ModelConfig(input_shape=[6, 6, 2], layers=[
    {"Conv2D": {"filters": 3, "kernel_size": 3, "use_bias": False}},
    {"BatchNormalization": {"scale": False}}, {"Flatten": {}}, {"Dense": {"units": 2}}])


def compiled(keras_module, optimizer_config: dict, steps: int = 10, epochs: int = 1):
    from cnnctl.compile import make_optimizer
    from cnnctl.model import build_model

    keras_module.utils.set_random_seed(0)  # an init from which a few steps at these rates never saturate
    model = build_model(STACK)
    optimizer = make_optimizer(OptimizerConfig(**optimizer_config), steps, epochs, model.trainable_variables)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    return model


def batch(n=8):
    rng = np.random.default_rng(0)
    return rng.random((n, 6, 6, 2), dtype=np.float32), rng.integers(0, 2, n)


def test_a_group_gets_its_multiple_of_the_learning_rate_and_schedule(keras_module):
    config = {"name": "sgd", "learning_rate": 0.1, "schedule": {"type": "piecewise_linear",
                                                                 "points": [[0, 1], [1, 0.5]]}}
    grouped = compiled(keras_module, dict(config, groups=[{"match": "batch_normalization/beta",
                                                           "lr_multiplier": 64}]))
    assert isinstance(grouped.optimizer, keras_module.optimizers.MultiOptimizer)
    rates = sorted(float(o._learning_rate(5)) for o in grouped.optimizer.optimizers)
    assert rates == pytest.approx([0.075, 0.075 * 64])
    plain = compiled(keras_module, config)
    plain.set_weights(grouped.get_weights())
    before = [v.numpy().copy() for v in plain.trainable_variables]
    for model in (plain, grouped):
        model.train_on_batch(*batch())
    # the same first gradient: plain SGD moves beta 64 times as far in the group, the rest alike
    for p, g, b in zip(plain.trainable_variables, grouped.trainable_variables, before, strict=True):
        ratio = 64 if p.path.endswith("beta") else 1
        np.testing.assert_allclose(g.numpy() - b, ratio * (p.numpy() - b), rtol=1e-4, atol=1e-7)


def test_a_frozen_group_does_not_move_and_the_rest_do(keras_module):
    model = compiled(keras_module, {"name": "adam", "learning_rate": 0.01, "weight_decay": 0.1,
                                    "groups": [{"match": "dense/.*", "lr_multiplier": 0}]})
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    model.train_on_batch(*batch())
    for v in model.trainable_variables:
        changed = not np.array_equal(v.numpy(), before[v.path])
        assert changed == (not v.path.split("/", 1)[1].startswith("dense/")), v.path


def test_reduce_lr_on_plateau_scales_every_group_and_keeps_the_multipliers(keras_module):
    from cnnctl.callbacks import current_learning_rate

    model = compiled(keras_module, {"name": "sgd", "learning_rate": 0.1,
                                    "groups": [{"match": "batch_normalization/beta", "lr_multiplier": 64}]})
    plateau = keras_module.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    model.fit(*batch(), epochs=2, verbose=0, callbacks=[plateau])  # the second epoch never improves by 1e9
    rates = sorted(float(o.learning_rate) for o in model.optimizer.optimizers)
    assert rates == pytest.approx([0.05, 0.05 * 64])
    assert current_learning_rate(model.optimizer) == pytest.approx(0.05)


def test_groups_that_match_nothing_or_overlap_are_config_errors(keras_module):
    with pytest.raises(ConfigError, match=r"groups\[0\]\.match: 'batchnorm/beta' matches no trainable variable "
                                          r"\(they are: batch_normalization/beta, conv2d/kernel"):
        compiled(keras_module, {"name": "sgd", "groups": [{"match": "batchnorm/beta", "lr_multiplier": 2}]})
    with pytest.raises(ConfigError, match=r"groups\[1\]\.match: 'dense/kernel' is already in groups\[0\]"):
        compiled(keras_module, {"name": "sgd", "groups": [{"match": "dense/.*"}, {"match": ".*kernel"}]})


def test_a_bad_pattern_is_refused_when_the_config_is_read():
    with pytest.raises(ValueError, match="not a regular expression"):
        OptimizerConfig(name="sgd", groups=[{"match": "conv2d/(kernel"}])


def test_weight_decay_per_group_and_exclusions(keras_module):
    model = compiled(keras_module, {"name": "sgd", "learning_rate": 0.1, "weight_decay": 0.5,
                                    "exclude_from_weight_decay": ["beta"],
                                    "groups": [{"match": "dense/kernel", "weight_decay": 0.0}]})
    main, dense = model.optimizer.optimizers[1], model.optimizer.optimizers[0]
    assert main.weight_decay == pytest.approx(0.5) and dense.weight_decay == pytest.approx(0.0)
    assert not main._use_weight_decay(model.layers[1].beta)
    assert main._use_weight_decay(model.layers[0].kernel)


def test_a_group_with_its_own_optimizer(keras_module):
    from cnnctl.muon import Muon

    model = compiled(keras_module, {
        "name": "sgd", "learning_rate": 10.0, "momentum": 0.85,
        "schedule": {"type": "piecewise_linear", "points": [[0, 1], [1, 0]]},
        "groups": [{"match": "conv2d/kernel", "optimizer": {"name": "muon", "learning_rate": 0.2, "momentum": 0.6}},
                   {"match": "dense/bias", "optimizer": {"name": "sgd", "learning_rate": 5.0, "schedule": {
                       "type": "piecewise_linear", "points": [[0, 1], [0.5, 0], [1, 0]]}}}]}, steps=10)
    conv, bias, main = model.optimizer.optimizers
    assert type(conv) is Muon and conv.momentum == 0.6
    # without a schedule of its own, the group's rate follows the main schedule's shape
    assert float(conv._learning_rate(5)) == pytest.approx(0.1)
    assert float(bias._learning_rate(5)) == pytest.approx(0.0) and float(bias._learning_rate(2)) == pytest.approx(3.0)
    assert float(main._learning_rate(5)) == pytest.approx(5.0) and main.momentum == 0.85
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    model.train_on_batch(*batch())
    assert all(not np.array_equal(v.numpy(), before[v.path]) for v in model.trainable_variables)


@pytest.mark.parametrize("group, message", [
    ({"match": "x", "lr_multiplier": 2, "optimizer": {"name": "sgd"}}, "own optimizer takes no lr_multiplier"),
    ({"match": "x", "weight_decay": 0.1, "optimizer": {"name": "sgd"}}, "own optimizer takes no weight_decay"),
    ({"match": "x", "optimizer": {"name": "sgd", "ema": {}}}, r"optimizer\.ema\n +Extra inputs are not permitted"),
    ({"match": "x", "optimizer": {"name": "sgd", "groups": [{"match": "y"}]}},
     r"optimizer\.groups\n +Extra inputs are not permitted"),
    ({"match": "x", "optimizer": {"name": "sgd", "ns_steps": 3}}, "sgd does not take ns_steps"),
])
def test_a_groups_optimizer_is_checked_when_the_config_is_read(group, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(name="sgd", groups=[group])


def test_ema_averages_and_averaged_swaps_in_and_back(keras_module):
    from cnnctl import averaging

    model = compiled(keras_module, {"name": "sgd", "learning_rate": 0.05, "ema": {"momentum": 0.5}})
    for _ in range(3):
        model.train_on_batch(*batch())
    found = averaging.pairs(model)
    assert len(found) == len(model.trainable_variables)
    raw = [v.numpy().copy() for v, _ in found]
    with averaging.averaged(model):
        for (variable, average), before in zip(found, raw, strict=True):
            np.testing.assert_array_equal(variable.numpy(), average.numpy())
            assert not np.array_equal(variable.numpy(), before)
    for (variable, _), before in zip(found, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), before)


def test_lookahead_copies_the_average_into_the_weights_every_n_steps(keras_module):
    from cnnctl import averaging

    model = compiled(keras_module, {"name": "sgd", "learning_rate": 0.5, "ema": {"momentum": 0.5,
                                                                                 "overwrite_every": 2}})
    model.train_on_batch(*batch())
    model.train_on_batch(*batch())  # step 2: the weights are now their average
    for variable, average in averaging.pairs(model):
        np.testing.assert_array_equal(variable.numpy(), average.numpy())


def test_a_ramped_momentum_grows_with_the_step_and_saves_as_its_peak(keras_module):
    from cnnctl import averaging

    model = compiled(keras_module, {"name": "sgd", "learning_rate": 0.05, "ema": {"momentum": 0.8, "ramp": 1}},
                     steps=10)
    momenta, last = [], None
    for _ in range(4):
        model.train_on_batch(*batch())
        variable, average = averaging.pairs(model)[0]
        w, a = variable.numpy().ravel(), average.numpy().ravel()
        if last is not None:  # a = m * last + (1 - m) * w
            momenta.append(float(np.median((a - w) / (last - w))))
        last = a
    assert momenta == pytest.approx([0.08, 0.16, 0.24], abs=1e-3)  # 0.8 * step / 10, steps 1-3
    config = keras_module.saving.serialize_keras_object(model.optimizer)
    assert config["config"]["ema_momentum"] == 0.8


def test_groups_and_ema_together_average_every_group(keras_module):
    from cnnctl import averaging

    model = compiled(keras_module, {"name": "sgd", "ema": {"momentum": 0.9},
                                    "groups": [{"match": "batch_normalization/beta", "lr_multiplier": 4}]})
    model.train_on_batch(*batch())
    assert {v.path for v, _ in averaging.pairs(model)} == {v.path for v in model.trainable_variables}


def test_no_averaging_is_a_no_op(keras_module):
    from cnnctl import averaging

    model = compiled(keras_module, {"name": "sgd"})
    assert averaging.pairs(model) == []
    with averaging.averaged(model):
        pass


def test_validation_and_checkpoints_see_the_average_and_training_keeps_its_own_weights(keras_module, tmp_path):
    from cnnctl import averaging
    from cnnctl.callbacks import AtomicCheckpoint
    from cnnctl.model import load_model

    model = compiled(keras_module, {"name": "sgd", "learning_rate": 0.5, "ema": {"momentum": 0.8}})
    x, y = batch(64)
    checkpoint = AtomicCheckpoint(tmp_path, monitor="val_loss")
    history = model.fit(x, y, batch_size=8, epochs=1, validation_data=(x[:16], y[:16]), verbose=0,
                        callbacks=[averaging.AveragedValidation(), checkpoint])
    found = averaging.pairs(model)
    # Keras' fit ends by copying the average in; the callback put the training weights back
    assert any(not np.array_equal(v.numpy(), a.numpy()) for v, a in found)
    with averaging.averaged(model):
        averaged_loss = model.evaluate(x[:16], y[:16], verbose=0)
        averaged_weights = [v.numpy() for v in model.weights]
    assert history.history["val_loss"][0] == pytest.approx(averaged_loss, rel=1e-5)
    for saved, expected in zip(load_model(tmp_path / "best.keras").weights, averaged_weights, strict=True):
        np.testing.assert_array_equal(saved.numpy(), expected)
