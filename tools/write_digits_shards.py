"""Write sklearn's bundled digits to WebDataset shards: python tools/write_digits_shards.py OUT_DIR"""

import sys

from swift_scale.data.writers import write_digits

if __name__ == "__main__":
    for split, pattern in write_digits(sys.argv[1] if len(sys.argv) > 1 else "data/digits").items():
        print(f"{split}: {pattern}")
