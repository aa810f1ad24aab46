"""Benchmark (issue 4a): a decode-bound WebDataset pipeline with vs without streaming rejection.

    python tools/bench/stream_rejection.py [--samples 2000] [--shards 4] [--size 384] [--keep 0.5]

Writes synthetic shards of JPEG images (``--size``² RGB) once, then runs the same webdataset pipeline
(tar → [KeepByGlobalId] → decode("rgb8") → to_tuple) twice and reports *delivered* samples per second.
The sampler decides from the raw sample's global id before decoding, so with a decode-bound pipeline the
delivered rate should stay close to the plain pipeline's (goal ratio ≥ 0.9) even though half the candidates
are dropped. The StreamingSplit training path (``data.mode=streaming``) is measured on the same images as
WebDataset shards and as parquet files written by ``datasets`` (streamed as a ``datasets.IterableDataset``).
One JSON object per line.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np


def write_shards(root: Path, samples: int, shards: int, size: int) -> list[str]:
    import webdataset as wds
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    urls = [str(root / f"bench-{s:06d}.tar") for s in range(shards)]
    if all(Path(u).exists() for u in urls):
        return urls
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    per = samples // shards
    for s, url in enumerate(urls):
        with wds.TarWriter(url) as sink:
            for i in range(per):
                base = (np.sin(xx / (7 + i % 13)) + np.cos(yy / (5 + i % 11))) * 60 + 128
                img = np.clip(base[..., None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
                sink.write({"__key__": f"{s:04d}_{i:06d}", "jpg": buf.getvalue(), "cls": str(i % 10).encode()})
    return urls


def run(urls, stage, repeats=2, source=False) -> tuple[float, int]:
    """Best-of-``repeats`` time and count of tar → [stage] → decode; ``source``: the stage replaces the tar
    reader."""
    import webdataset as wds

    best, delivered = float("inf"), 0
    for _ in range(repeats):
        stages = [wds.SimpleShardList(urls)] + ([] if source else [wds.tarfile_to_samples()])
        if stage is not None:
            stages.append(stage)
        stages += [wds.decode("rgb8"), wds.to_tuple("jpg", "cls")]
        t0 = time.perf_counter()
        delivered = sum(1 for _ in wds.DataPipeline(*stages))
        best = min(best, time.perf_counter() - t0)
    return best, delivered


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--keep", type=float, default=0.5, help="kept fraction = 1 / oversampling factor")
    ap.add_argument("--dir", default="/tmp/swift_scale_stream_bench")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the StreamingSplit pass")
    args = ap.parse_args()

    from swift_scale.data.shards import build_index
    from swift_scale.sampler.stages import KeepByGlobalId

    urls = write_shards(Path(args.dir), args.samples, args.shards, args.size)
    index = build_index(urls)
    probs = np.random.default_rng(1).random(index.total) + 0.1
    probs /= probs.sum()
    t_plain, n_plain = run(urls, None)
    t_ss, n_ss = run(urls, KeepByGlobalId(index, probs, keep_fraction=args.keep, seed=0))
    stage = KeepByGlobalId(index, probs, keep_fraction=args.keep, seed=0)
    t_read, n_read = run(urls, stage.read, source=True)
    plain = n_plain / t_plain
    for name, t, n in [("webdataset + KeepByGlobalId stage", t_ss, n_ss),
                       ("webdataset with KeepByGlobalId.read as the source", t_read, n_read)]:
        print(json.dumps({"bench": "stream_rejection", "pipeline": name, "image_size": args.size,
                          "candidates": index.total, "keep_fraction": args.keep,
                          "plain_samples_per_s": round(plain, 1), "sampled_delivered_per_s": round(n / t, 1),
                          "delivered": n, "ratio": round(n / t / plain, 3), "goal_ratio": 0.9}), flush=True)

    # the training path of data.mode=streaming: StreamingSplit.loader, a uniform pass vs a sampled pass
    from swift_scale.data.hf import hf_stream_index
    from swift_scale.data.stream import StreamingSplit, StreamOptions

    sources = [("StreamingSplit (data.mode=streaming), WebDataset shards", index, "jpg", "cls"),
               ("StreamingSplit (data.mode=streaming), HF parquet via datasets.IterableDataset",
                hf_stream_index(f"hf:parquet:{write_parquet(urls)}/*.parquet"), "image", "label")]
    for name, idx, image_key, label_key in sources:
        split = StreamingSplit(idx, StreamOptions(image_key=image_key, label_key=label_key, in_chans=3,
                                                  num_classes=10, oversample=1 / args.keep, shuffle_buffer=256,
                                                  num_workers=args.workers, on_error="fail"))
        u_rate, _ = delivered_rate(split, None, 0)
        s_rate, n = delivered_rate(split, probs, 1)
        print(json.dumps({"bench": "stream_rejection", "pipeline": name, "image_size": args.size,
                          "workers": args.workers, "candidates": idx.total,
                          "uniform_samples_per_s": round(u_rate, 1), "sampled_delivered_per_s": round(s_rate, 1),
                          "delivered": n, "ratio": round(s_rate / u_rate, 3), "goal_ratio": 0.9}), flush=True)


def delivered_rate(split, p, pass_) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(2):
        plan = split.plan(p, pass_)
        t0 = time.perf_counter()
        n = sum(len(y) for _, y, _ in split.loader(plan, pass_, 0, 1, 32))
        best = min(best, time.perf_counter() - t0)
    return n / best, n


def write_parquet(urls: list[str]) -> Path:
    """The same JPEGs as parquet files (one per tar) written by ``datasets`` with an ``Image`` feature."""
    import datasets
    import webdataset as wds

    out = Path(urls[0]).parent / "parquet"
    files = [out / f"{Path(u).stem}.parquet" for u in urls]
    if all(f.exists() for f in files):
        return out
    out.mkdir(exist_ok=True)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    for url, f in zip(urls, files):
        rows = list(wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples()))
        datasets.Dataset.from_dict({"image": [{"bytes": r["jpg"], "path": None} for r in rows],
                                    "label": [int(r["cls"]) for r in rows]}, features=feats).to_parquet(str(f))
    return out


if __name__ == "__main__":
    main()
