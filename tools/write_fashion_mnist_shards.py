"""Write Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist) to WebDataset shards.

python tools/write_fashion_mnist_shards.py OUT_DIR [SOURCE_DIR]
With network access instead: `datasets.load_dataset("zalando-datasets/fashion_mnist")`, then write the images and
labels with swift_scale.data.writers.write_shards.
"""

import sys

from swift_scale.data.writers import write_fashion_mnist

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "data/fashion-mnist"
    src = sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist"
    for split, pattern in write_fashion_mnist(out, src).items():
        print(f"{split}: {pattern}")
