"""Write Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist) to WebDataset shards.

python tools/write_fashion_mnist_shards.py OUT_DIR [SOURCE_DIR] [--maxcount=N]   (samples per shard, 10000)
With network access instead: `datasets.load_dataset("zalando-datasets/fashion_mnist")`, then write the images and
labels with swift_scale.data.writers.write_shards.
"""

import sys

from swift_scale.data.writers import write_fashion_mnist

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--maxcount")]
    maxcount = int(next((a.split("=")[1] for a in sys.argv[1:] if a.startswith("--maxcount=")), 10000))
    out = args[0] if args else "data/fashion-mnist"
    src = args[1] if len(args) > 1 else "/usr/share/datasets/fashion-mnist"
    for split, pattern in write_fashion_mnist(out, src, maxcount=maxcount).items():
        print(f"{split}: {pattern}")
