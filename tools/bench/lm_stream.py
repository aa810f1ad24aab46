"""Benchmark (issue 17): language models streamed from token shards — throughput and memory.

    python tools/bench/lm_stream.py [--text data/kjv-small/train.txt] [--copies 16] [--seq-len 128]
        [--parts throughput features rss big] [--out runs/bench/lm_stream]

The corpus is ``--text`` tokenized with a 2048-token BPE and written as token shards (``--copies`` copies of
it, 4 shards per copy). One JSON object per result:

1. ``throughput``: tokens/s delivered by the training stream (:class:`TokenStreamingSplit`, the
   ``data.mode=streaming`` path) keeping half the sequences ∝ p (decided from the global id before the sample is
   read) vs a uniform pass over the same shards (goal ≥ 0.95×), 0 and 2 DataLoader workers. A pass forks its
   workers afresh, so the stream must be long enough (``--copies``) for that fixed cost not to dominate.
2. ``features``: the LM features pass (``extract_features``: loss, rarity, gradient proxy per sequence, written
   to the memory-mapped store) vs a bare ``torch.no_grad`` forward over the same stream and model (goal ≥ 0.9×).
   ``--repeats`` interleaved passes of each; ``ratio`` from the best of each, ``median_paired_ratio`` the median
   of each repeat's own ratio (a shared machine's speed drifts between passes).
3. ``rss``: peak RSS of the largest process of a whole ``swift-scale run`` on 2 processes (torchrun), streaming
   the text files (tokenized once into the cache beside the run), at 1×, 2× and 4× the corpus: flat means the
   token data is never held in memory (per-sequence arrays — features, probabilities — are O(N) by design).
4. ``big``: the streamed data path alone (index pass, a uniform and a sampled pass) over token shards larger than
   the process's own RSS, with its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def emit(row: dict) -> None:
    print(json.dumps({"bench": "lm_stream", **row}), flush=True)


def corpus_shards(args, out: Path, copies: int):
    """(token shard urls, tokenizer) of ``copies`` copies of the text."""
    from swift_scale.data.text import encode, load_tokenizer, pack, train_tokenizer
    from swift_scale.data.writers import write_token_shards

    text = Path(args.text).read_text()
    tok_dir = out / "tokenizer"
    tok = load_tokenizer(tok_dir) if (tok_dir / "tokenizer.json").exists() else train_tokenizer(text, 2048, tok_dir)
    seqs = pack(encode(tok, text), args.seq_len)
    root = out / f"shards_x{copies}"
    if not root.exists():
        for c in range(copies):
            for k, part in enumerate(np.array_split(seqs, 4)):
                write_token_shards(root, f"c{c:03d}k{k}", part, maxcount=1 << 30)
    return sorted(str(p) for p in root.glob("*.tar")), tok


def stream(urls, seq_len: int, vocab: int, workers: int = 0):
    from swift_scale.data.shards import build_index
    from swift_scale.data.stream import StreamOptions
    from swift_scale.data.tokens import TokenStreamingSplit

    opts = StreamOptions(image_key="tokens.npy", seed=0, shuffle_buffer=1000, num_workers=workers)
    return TokenStreamingSplit(build_index(urls), opts, seq_len, vocab)


def delivered_rate(split, probs, batch: int = 64, repeats: int = 3) -> float:
    best = 0.0
    for r in range(repeats):
        plan = split.plan(probs, r)
        t0 = time.perf_counter()
        tokens = sum(x.numel() for x, _, _ in split.loader(plan, r, 0, 1, batch))
        best = max(best, tokens / (time.perf_counter() - t0))
    return best


def throughput(args, out: Path) -> None:
    urls, tok = corpus_shards(args, out, args.copies)
    for workers in (0, 2):
        split = stream(urls, args.seq_len, len(tok), workers)
        p = np.random.default_rng(0).random(len(split)) ** 2
        uniform = delivered_rate(split, None)
        sampled = delivered_rate(split, p / p.sum())
        emit({"part": "throughput", "sequences": len(split), "workers": workers, "uniform_tokens_per_s": round(uniform),
              "sampled_tokens_per_s": round(sampled), "ratio": round(sampled / uniform, 3), "goal": 0.95})


def features(args, out: Path) -> None:
    from accelerate import Accelerator

    from swift_scale.data.text import unigram_rarity
    from swift_scale.features.extract import extract_features
    from swift_scale.train.models import create_lm
    from swift_scale.train.tasks import LMTask

    urls, tok = corpus_shards(args, out, 1)
    split = stream(urls, args.seq_len, len(tok))
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(0)
    model = acc.prepare(create_lm("gpt2", len(tok), args.seq_len, None, n_layer=args.n_layer, n_embd=args.n_embd,
                                  n_head=max(4, args.n_embd // 64), bos_token_id=0, eos_token_id=0).eval())
    task = LMTask(unigram_rarity(np.zeros((1, 1), np.int64), len(tok)))

    @torch.no_grad()
    def bare():
        for s in range(len(urls)):
            for x, _, _ in split.feature_batches(s, batch_size=64):
                model(input_ids=split.to_input(x, acc.device))

    def full():
        import shutil

        shutil.rmtree(out / "store", ignore_errors=True)
        extract_features(acc, model, split, out / "store", split.offsets.tolist(), split.counts.tolist(), task,
                         batch_size=64, progress=False)

    times: dict[str, list[float]] = {}
    for name, fn in (("bare", bare), ("features", full)) * args.repeats:  # interleaved
        t0 = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
    n = len(split) * args.seq_len
    best = {k: min(v) for k, v in times.items()}
    # this shared 2-core machine's speed drifts by ±20% over a minute: each repeat's own ratio, then the median
    paired = float(np.median(np.array(times["bare"]) / np.array(times["features"])))
    emit({"part": "features", "tokens": n, "bare_tokens_per_s": round(n / best["bare"]),
          "features_tokens_per_s": round(n / best["features"]), "ratio": round(best["bare"] / best["features"], 3),
          "median_paired_ratio": round(paired, 3),
          "n_layer": args.n_layer, "n_embd": args.n_embd, "vocab": len(tok), "threads": torch.get_num_threads(),
          "repeats": args.repeats, "goal": 0.9})


def rss(args, out: Path) -> None:
    """Whole runs on 2 processes over 1×, 2×, 4× the text (as text files, cached once as token shards)."""
    text = Path(args.text).read_text()
    for copies in (1, 2, 4):
        d = out / f"text_x{copies}"
        d.mkdir(parents=True, exist_ok=True)
        for c in range(copies):
            if not (d / f"part{c:03d}.txt").exists():
                (d / f"part{c:03d}.txt").write_text(text)
        run = out / (f"run_x{copies}" + (f"_tok{args.tokenizer_sample_mb}" if args.tokenizer_sample_mb != 64 else ""))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "swift_scale.cli", "run", "data.task=lm", "data.mode=streaming",
               f"data.train={d}/part*.txt", f"data.val={Path(args.text).with_name('val.txt')}",
               f"data.test={Path(args.text).with_name('test.txt')}", f"data.seq_len={args.seq_len}",
               "data.vocab_size=2048", "data.noise_rate=0.3", "model.name=gpt2", "model.kwargs.n_layer=1",
               "model.kwargs.n_embd=32", "model.kwargs.n_head=2", "train.epochs=1", "train.batch_size=64",
               "train.cpu=true", "train.progress=false", "search.trials=2", "search.finetune_epochs=1",
               f"data.tokenizer_sample_mb={args.tokenizer_sample_mb}", f"run.out_dir={run}"]
        t0 = time.time()
        peak = _peak_rss(cmd)
        summary = json.loads((run / "summary.json").read_text())
        size = sum(p.stat().st_size for p in Path(f"{run}.tokens").glob("*.tar"))
        emit({"part": "rss", "copies": copies, "text_mb": round(copies * len(text) / 1e6, 2),
              "token_shards_mb": round(size / 1e6, 2), "train_sequences": summary["num_train"],
              "tokenizer_sample_mb": args.tokenizer_sample_mb, "peak_rss_mb": round(peak / 1e6, 1), "seconds": round(time.time() - t0, 1), "processes": 2})


def big(args, out: Path) -> None:
    """The data path alone over token shards larger than the process's RSS (written once, synthetic tokens)."""
    from swift_scale.data.writers import write_token_shards

    root = out / "big"
    if not (root / "done").exists():  # shards of 50k sequences until the tars (headers included) reach --big-mb
        rng, s = np.random.default_rng(0), 0
        while sum(p.stat().st_size for p in root.glob("*.tar")) < args.big_mb * 1e6:
            write_token_shards(root, f"b{s:03d}", rng.integers(0, 2048, (50_000, args.seq_len), dtype=np.uint16),
                               maxcount=1 << 30)
            s += 1
        (root / "done").touch()
    code = ("import sys, json, resource, time, numpy as np; sys.path.insert(0, sys.argv[1]);"
            "from lm_stream import stream; import glob;"
            "urls = sorted(glob.glob(sys.argv[2] + '/*.tar')); s = stream(urls, int(sys.argv[3]), 2048);"
            "t0 = time.time(); n = 0\n"
            "for probs, p in ((None, 0), (np.random.default_rng(0).random(len(s)), 1)):\n"
            "    plan = s.plan(probs, p); n += sum(x.numel() for x, _, _ in s.loader(plan, p, 0, 1, 256))\n"
            "print(json.dumps({'tokens': n, 'seconds': time.time() - t0, 'sequences': len(s),"
            " 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))")
    res = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(root), str(args.seq_len)],
                         capture_output=True, text=True, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in root.glob("*.tar"))
    emit({"part": "big", "token_shards_mb": round(size / 1e6, 1), "sequences": got["sequences"],
          "tokens_read": got["tokens"], "peak_rss_mb": round(got["rss"] / 1e6, 1),
          "shards_larger_than_rss": size > got["rss"], "seconds": round(got["seconds"], 1)})


def _peak_rss(cmd) -> int:
    """Run ``cmd`` to completion under a fresh wrapper process; the peak RSS (bytes) of its largest descendant
    (the kernel passes a reaped process's peak up to its parent: torchrun's ranks reach the wrapper)."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]);"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0 else -1)")
    res = subprocess.run([sys.executable, "-c", wrapper, *cmd], cwd=ROOT, capture_output=True, text=True)
    peak = int(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else -1
    if peak < 0:
        sys.exit(res.stderr[-3000:])
    return peak * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default=str(ROOT / "data" / "kjv-small" / "train.txt"))
    ap.add_argument("--tokenizer-sample-mb", type=int, default=64,
                    help="rss: data.tokenizer_sample_mb of the runs (1 keeps the BPE's training text the same size)")
    ap.add_argument("--copies", type=int, default=16, help="copies of the text in the throughput stream")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2, help="GPT-2 layers of the features part's model")
    ap.add_argument("--n-embd", type=int, default=128, help="its width (heads: width / 64, at least 4)")
    ap.add_argument("--big-mb", type=float, default=1500.0, help="size of the token shards of the 'big' part")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes of each kind in the features part")
    ap.add_argument("--parts", nargs="+", default=["throughput", "features", "rss", "big"])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "lm_stream"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)
    for part in args.parts:
        {"throughput": throughput, "features": features, "rss": rss, "big": big}[part](args, out)


if __name__ == "__main__":
    main()
