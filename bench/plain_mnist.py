"""Jordi Torres' MNIST CNN written as his tutorial writes it (plain tf.keras), for bench/run.py.

usage: plain_mnist.py MNIST_NPZ EPOCHS RESULT_JSON

The tutorial's code with three changes: the data comes from the .npz given (the file format
keras.datasets.mnist.load_data() reads, possibly a slice of it), verbose=0, and a callback that
records epoch times. Everything else is the tutorial's: float32 images divided by 255, one-hot
labels from to_categorical, the Sequential model, compile(loss="categorical_crossentropy",
optimizer="sgd"), fit(batch_size=100), evaluate on the test set.
"""

import sys

import numpy as np
from keras import Input, layers, models
from keras.utils import to_categorical
from plain_common import EpochTimes, write_result

npz_path, epochs, result_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]

with np.load(npz_path) as mnist:  # = mnist.load_data()
    train_images, train_labels = mnist["x_train"], mnist["y_train"]
    test_images, test_labels = mnist["x_test"], mnist["y_test"]

train_images = train_images.reshape((len(train_images), 28, 28, 1))
train_images = train_images.astype("float32") / 255
test_images = test_images.reshape((len(test_images), 28, 28, 1))
test_images = test_images.astype("float32") / 255
train_labels = to_categorical(train_labels, 10)  # 10: a small slice may lack a digit
test_labels = to_categorical(test_labels, 10)

model = models.Sequential()
model.add(Input(shape=(28, 28, 1)))  # Keras 3 spelling of input_shape=(28, 28, 1) on the first layer
model.add(layers.Conv2D(32, (5, 5), activation="relu"))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (5, 5), activation="relu"))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Flatten())
model.add(layers.Dense(10, activation="softmax"))

model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
timer = EpochTimes()
history = model.fit(train_images, train_labels, batch_size=100, epochs=epochs, verbose=0, callbacks=[timer])
test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=0)

write_result(result_path, epoch_seconds=timer.seconds, test_loss=test_loss, test_accuracy=test_acc,
             train_images=len(train_images), test_images=len(test_images), history=history.history)
