"""Decode a CIFAR-10 image folder as cnnctl does and write the arrays to an .npz (for dataset: npz).

usage: cifar10_arrays.py IMAGE_FOLDER OUT_NPZ

cnnctl.data.load_splits with dataset=directory: the same decoding as `cnnctl train`, and it fills
cnnctl's decode cache ($CNNCTL_CACHE), so later runs on this folder only read the cache.
"""

import json
import sys

import numpy as np

from cnnctl.data import load_splits
from cnnctl.schema import DataConfig

folder, out = sys.argv[1], sys.argv[2]
splits = load_splits(DataConfig(dataset="directory", root=folder), input_shape=(32, 32, 3), num_classes=10,
                     validation="none", validation_split=0.2, seed=0)
with open(out, "wb") as handle:
    np.savez(handle, x_train=splits.x_train, y_train=splits.y_train, x_test=splits.x_test, y_test=splits.y_test)
print(json.dumps({"train_images": len(splits.x_train), "test_images": len(splits.x_test),
                  "class_names": splits.class_names}))
