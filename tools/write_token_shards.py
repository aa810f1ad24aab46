"""Tokenize a large text corpus once into WebDataset shards of packed sequences (``tokens.npy`` samples).

    python tools/write_token_shards.py OUT_DIR --tokenizer TOK_DIR --seq-len 128 \\
        --train 'corpus/train-*.txt' --val corpus/val.txt --test corpus/test.txt [--maxcount 10000]

Without a tokenizer directory, ``--vocab-size N`` trains a byte-level BPE on the training text into
OUT_DIR/tokenizer first. Then run with ``data.task=lm data.train='OUT_DIR/train-{000000..000NNN}.tar'
data.tokenizer=OUT_DIR/tokenizer`` (the printed patterns).
"""

import argparse
from pathlib import Path

from swift_scale.data.text import encode, load_tokenizer, pack, read_text, train_tokenizer
from swift_scale.data.writers import write_token_shards

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--train", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--maxcount", type=int, default=10000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tokenizer:
        tok, tok_dir = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        tok_dir = out / "tokenizer"
        tok = train_tokenizer(read_text(args.train, field="--train"), args.vocab_size, tok_dir)
    for split in ("train", "val", "test"):
        seqs = pack(encode(tok, read_text(getattr(args, split), field=f"--{split}")), args.seq_len)
        print(f"{split}: {write_token_shards(out, split, seqs, args.maxcount)} ({len(seqs)} sequences)")
    print(f"tokenizer: {tok_dir}")
