"""The Towards Data Science CIFAR-10 CNN written as the tutorial writes it (plain tf.keras), for bench/run.py.

usage: plain_cifar10.py IMAGE_FOLDER EPOCHS RESULT_JSON [SEED]

The images are decoded exactly as cnnctl decodes them (cnnctl.data.load_splits with
dataset=directory, which also reads cnnctl's decode cache), then converted as the tutorial
converts keras.datasets.cifar10 arrays: astype("float32") / 255 and to_categorical. Model, compile
(optimizer="rmsprop") and fit (batch_size=256, validation_data=(x_test, y_test), shuffle=True) are
the tutorial's; verbose=0, a callback recording epoch times and, given a SEED,
keras.utils.set_random_seed(SEED) (Python, NumPy and TensorFlow: initial weights, dropout, fit's
shuffling; the tutorial is unseeded) are the only additions.
"""

import sys

from keras import Input, layers, models
from keras.utils import set_random_seed, to_categorical
from plain_common import EpochTimes, write_result

from cnnctl.data import load_splits
from cnnctl.schema import DataConfig

folder, epochs, result_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    set_random_seed(int(sys.argv[4]))
num_classes = 10

splits = load_splits(DataConfig(dataset="directory", root=folder), input_shape=(32, 32, 3), num_classes=num_classes,
                     validation="none", validation_split=0.2, seed=0)
x_train, y_train, x_test, y_test = splits.x_train, splits.y_train, splits.x_test, splits.y_test

x_train = x_train.astype("float32")
x_test = x_test.astype("float32")
x_train /= 255
x_test /= 255
y_train = to_categorical(y_train, num_classes)
y_test = to_categorical(y_test, num_classes)

model = models.Sequential()
model.add(Input(shape=x_train.shape[1:]))  # Keras 3 spelling of input_shape=x_train.shape[1:]
model.add(layers.Conv2D(32, (3, 3), padding="same", activation="relu"))
model.add(layers.Conv2D(32, (3, 3), activation="relu"))
model.add(layers.MaxPooling2D(pool_size=(2, 2)))
model.add(layers.Dropout(0.25))
model.add(layers.Conv2D(64, (3, 3), padding="same", activation="relu"))
model.add(layers.Conv2D(64, (3, 3), activation="relu"))
model.add(layers.MaxPooling2D(pool_size=(2, 2)))
model.add(layers.Dropout(0.25))
model.add(layers.Conv2D(64, (3, 3), padding="same", activation="relu"))
model.add(layers.Conv2D(64, (3, 3), activation="relu"))
model.add(layers.MaxPooling2D(pool_size=(2, 2)))
model.add(layers.Dropout(0.25))
model.add(layers.Flatten())
model.add(layers.Dense(512, activation="relu"))
model.add(layers.Dropout(0.5))
model.add(layers.Dense(num_classes, activation="softmax"))

model.compile(loss="categorical_crossentropy", optimizer="rmsprop", metrics=["accuracy"])
timer = EpochTimes()
history = model.fit(x_train, y_train, batch_size=256, epochs=epochs, validation_data=(x_test, y_test), shuffle=True,
                    verbose=0, callbacks=[timer])
test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)

write_result(result_path, epoch_seconds=timer.seconds, test_loss=test_loss, test_accuracy=test_acc,
             train_images=len(x_train), test_images=len(x_test), history=history.history)
