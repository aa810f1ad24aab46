"""Language models at scale: token shards streamed like images (kept sets, equal steps, resume, bad shards), the
text → token-shard cache, and noise by sequence or document (corrupt, shuffle, duplicate)."""

import json

import numpy as np
import pytest
import torch
import webdataset as wds

from swift_scale.data import tokens
from swift_scale.data.shards import build_index
from swift_scale.data.stream import StreamOptions
from swift_scale.data.text import corrupt_sequences, encode, pack, train_tokenizer
from swift_scale.data.tokens import (
    SequenceNoise,
    TokenStreamingSplit,
    build_token_cache,
    file_chunks,
    read_cache_meta,
    row_chunks,
)
from swift_scale.data.writers import write_token_shards
from tests.conftest import ROOT

TEXT = ROOT / "tests" / "fixtures"
L, VOCAB = 16, 300


def _documents(n_docs=40):
    """KJV verses grouped into blank-line-separated documents of 3-12 lines."""
    lines = (TEXT / "kjv_train.txt").read_text().splitlines()
    rng = np.random.default_rng(0)
    docs, i = [], 0
    for _ in range(n_docs):
        k = int(rng.integers(3, 13))
        docs.append("\n".join(lines[i:i + k]))
        i += k
    return docs


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer((TEXT / "kjv_train.txt").read_text(), VOCAB)


@pytest.fixture(scope="module")
def token_shards(tmp_path_factory, tok):
    """Packed KJV sequences written by write_token_shards into 5 shards of uneven size."""
    out = tmp_path_factory.mktemp("tok")
    seqs = pack(encode(tok, (TEXT / "kjv_train.txt").read_text()), L)
    urls = []
    for k, (a, b) in enumerate(((0, 7), (7, 90), (90, 91), (91, 300), (300, len(seqs)))):
        urls.append(write_token_shards(out, f"s{k}", seqs[a:b], maxcount=10_000).replace("{000000..000000}", "000000"))
    return build_index(urls), seqs


def _split(index, **kw):
    opts = StreamOptions(**(dict(image_key="tokens.npy", seed=5, shuffle_buffer=20, on_error="fail") | kw))
    return TokenStreamingSplit(index, opts, L, VOCAB)


def _delivered(split, probs, pass_, world, global_batch, start_step=0):
    per_rank = global_batch // world
    plan = split.plan(probs, pass_)
    return plan, {rank: [(x.clone(), g.tolist()) for x, _, g in split.loader(plan, pass_, rank, world, per_rank,
                                                                              start_step)]
                  for rank in range(world)}


@pytest.mark.parametrize("workers", [0, 2])
def test_token_stream_kept_set_is_the_same_for_world_1_2_4_and_workers(token_shards, workers):
    index, seqs = token_shards
    split = _split(index, num_workers=workers)
    p = np.random.default_rng(0).random(index.total) ** 3
    sets = []
    for world in (1, 2, 4):
        plan, out = _delivered(split, p / p.sum(), 1, world, 16)
        steps = split.steps(plan, world, 16 // world)
        assert all(len(batches) == steps for batches in out.values())  # equal steps on every rank
        gids = [g for batches in out.values() for _, b in batches for g in b]
        assert len(gids) == len(set(gids)) and plan.mask[gids].all()
        for batches in out.values():  # the tokens are the stored sequences of those ids
            for x, b in batches:
                assert torch.equal(x, torch.from_numpy(seqs[b]))
        sets.append(set(gids))
    assert sets[0] == sets[1] == sets[2] and len(sets[0]) == (round(index.total / 2) // 16) * 16


@pytest.mark.parametrize("workers", [0, 2])
def test_token_stream_resumes_at_pass_and_step(token_shards, workers):
    split = _split(token_shards[0], num_workers=workers)
    p = np.random.default_rng(1).random(len(split))
    _, full = _delivered(split, p, 3, 2, 8)
    _, rest = _delivered(split, p, 3, 2, 8, start_step=4)
    for rank in full:
        assert [b for _, b in rest[rank]] == [b for _, b in full[rank][4:]]


def test_sequence_noise_is_the_in_memory_corruption_row_by_row(token_shards):
    _, seqs = token_shards
    for mode in ("replace", "shuffle"):
        want, ids = corrupt_sequences(seqs, 0.3, VOCAB, 7, mode)
        noise = SequenceNoise.make(len(seqs), 0.3, VOCAB, 7, mode)
        assert np.array_equal(noise.ids, ids)
        gids = np.random.default_rng(0).permutation(len(seqs))[:50]  # any rows, any order
        assert np.array_equal(noise.apply_rows(seqs[gids], gids), want[gids])


def test_document_noise_takes_whole_documents_and_duplicates_copy_a_few_sources(token_shards):
    _, seqs = token_shards
    doc_of = np.repeat(np.arange(60), -(-len(seqs) // 60))[:len(seqs)]
    noise = SequenceNoise.make(len(seqs), 0.25, VOCAB, 3, "replace", "document", doc_of)
    assert len(noise.docs) == 15 and np.array_equal(noise.ids, np.flatnonzero(np.isin(doc_of, noise.docs)))
    assert noise.record()["flipped_documents"] == noise.docs.tolist()
    dup = SequenceNoise.make(len(seqs), 0.3, VOCAB, 3, "duplicate", repeats=20)
    dup.attach(lambda ids: {i: seqs[i] for i in ids})
    sources = dup.source_ids
    assert len(sources) == -(-len(dup.ids) // 20) and not set(sources) & set(dup.ids.tolist())
    noisy = dup.apply_rows(seqs, np.arange(len(seqs)))
    for i in dup.ids[:10]:
        assert np.array_equal(noisy[i], seqs[dup.source_of[int(i)]])
    clean = np.setdiff1d(np.arange(len(seqs)), dup.ids)
    assert np.array_equal(noisy[clean], seqs[clean])


def test_bad_token_samples_are_named_or_skipped(tmp_path, token_shards):
    _, seqs = token_shards
    path = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "ok", "tokens.npy": seqs[0].astype(np.uint16)})
        sink.write({"__key__": "float", "tokens.npy": seqs[1].astype(np.float32)})
        sink.write({"__key__": "short", "tokens.npy": seqs[2][:5].astype(np.uint16)})
        sink.write({"__key__": "vocab", "tokens.npy": np.full(L, VOCAB + 3, np.uint16)})
        sink.write({"__key__": "none", "txt": "no tokens"})
    index = build_index([str(path)])
    fail = _split(index, shuffle_buffer=0)
    with pytest.raises(Exception, match=r"bad-000000.tar: sample 'float' tokens.npy has dtype float32"):
        list(fail.feature_batches(0, batch_size=8))
    skip = _split(index, shuffle_buffer=0, on_error="skip")
    batches = list(skip.feature_batches(0, batch_size=8))
    assert batches[0][2].tolist() == [0, 1, 2, 3, 4]  # every id keeps its row (bad ones filled with zeros)
    reasons = {e["key"]: e["reason"] for e in skip.take_skipped()}
    assert set(reasons) == {"float", "short", "vocab", "none"}
    assert "shape (5,)" in reasons["short"] and "outside [0, 300)" in reasons["vocab"]


@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_chunked_readers_split_lines_as_the_whole_text_does(tmp_path, monkeypatch, chunk):
    """Rows and files read chunk by chunk give the lines of the whole text read at once (CRLF files, rows that
    end in a line break or a lone CR, blank rows), each line with its document."""
    monkeypatch.setattr(tokens, "CHUNK_LINES", chunk)
    rows = ["in the beginning\n", "", "and the earth\r", "was\nwithout form\n\n", "void", "\n", "x"]
    text = "\n".join(r for r in rows if r)
    got = [(line, int(d)) for lines, docs in row_chunks(rows) for line, d in zip(lines, docs)]
    assert [line for line, _ in got] == text.splitlines(keepends=True)
    assert [d for _, d in got] == sorted(d for _, d in got) and got[-1][1] == 5  # 6 non-empty rows
    f = tmp_path / "crlf.txt"
    f.write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    lines = [line for part, _ in file_chunks(str(f)) for line in part]
    assert lines == f.read_text().splitlines(keepends=True) == ["one\n", "two\n", "\n", "three\n"]


def test_the_cache_is_built_once_per_shard_and_the_same_for_one_or_two_ranks(tmp_path, tok):
    docs = _documents()
    files = []
    for k in range(3):
        f = tmp_path / f"part{k}.txt"
        f.write_text("\n\n".join(docs[k::3]) + "\n")
        files.append(str(f))

    def read_lines(i):  # small chunks, so sequences and documents cross chunk boundaries
        from swift_scale.data import tokens

        tokens.CHUNK_LINES, old = 7, tokens.CHUNK_LINES
        try:
            yield from tokens.file_chunks(files[i])
        finally:
            tokens.CHUNK_LINES = old

    one, two = tmp_path / "one", tmp_path / "two"
    build_token_cache(files, read_lines, tok, L, one)
    for rank in (1, 0):  # two ranks, each its shards (ordinal mod 2), in any order
        build_token_cache(files, read_lines, tok, L, two, rank=rank, world=2)
    from swift_scale.data.text import line_documents

    for i in range(3):
        assert (one / f"train-{i:06d}.tar").read_bytes() == (two / f"train-{i:06d}.tar").read_bytes()
        lines = open(files[i]).read().splitlines(keepends=True)  # the whole file at once, as in memory
        docs_all = line_documents(lines)
        assert docs_all.max() + 1 == len(docs[i::3])
        meta = read_cache_meta(one, i)
        text = open(files[i]).read()
        want = pack(encode(tok, text), L)  # chunk by chunk, the same sequences as the whole file in memory
        got = [np.load(__import__("io").BytesIO(x["tokens.npy"])) for x in wds.WebDataset(
            str(one / f"train-{i:06d}.tar"), shardshuffle=False)]
        assert meta["sequences"] == len(want) and np.array_equal(np.stack(got), want)
        assert meta["documents"] == len(docs[i::3])
        doc_of = np.load(one / f"train-{i:06d}.docs.npy")
        assert doc_of[0] == i << 32 and np.all(np.diff(doc_of) >= 0) and doc_of[-1] < (i << 32) + meta["documents"]
    before = (one / "train-000001.tar").stat().st_mtime_ns
    build_token_cache(files, read_lines, tok, L, one)  # done: nothing rewritten
    assert (one / "train-000001.tar").stat().st_mtime_ns == before
    build_token_cache(files, read_lines, tok, L + 1, one)  # another seq_len: rebuilt
    assert read_cache_meta(one, 1)["seq_len"] == L + 1


LM = ["data.task=lm", "data.vocab_size=300", "data.seq_len=32", "model.name=gpt2", "model.kwargs.n_layer=1",
      "model.kwargs.n_embd=32", "model.kwargs.n_head=2", "train.epochs=2", "train.batch_size=32", "train.cpu=true",
      "train.progress=false", "search.trials=3", "search.finetune_epochs=1", "search.n_init=1",
      "search.num_restarts=1", "search.raw_samples=16", "search.rounds=1"]


@pytest.mark.slow
def test_lm_streams_text_with_document_noise_through_every_phase(tmp_path):
    """Text files streamed: tokenized once into the cache beside the run, 30% of the documents corrupted, every
    phase runs, the summary reports noise detection per document, and a rerun reuses the cache."""
    from tests.conftest import cli

    docs = _documents(60)
    for k in range(2):
        (tmp_path / f"train{k}.txt").write_text("\n\n".join(docs[k::2]) + "\n")
    out = tmp_path / "run"
    args = [f"data.train={tmp_path}/train{{0..1}}.txt", f"data.val={TEXT / 'kjv_val.txt'}",
            f"data.test={TEXT / 'kjv_test.txt'}", f"run.out_dir={out}", "data.mode=streaming", "data.num_workers=2",
            "data.noise_rate=0.3", "data.noise_unit=document", *LM]
    r = cli("run", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "lm" and 0 <= summary["noise_detection_auroc_by_document"] <= 1
    noise = json.loads((out / "noise.json").read_text())
    assert noise["unit"] == "document" and len(noise["flipped_documents"]) == round(0.3 * 60)
    cache = tmp_path / "run.tokens"
    index = json.loads((out / "index.json").read_text())["train"]
    assert index["urls"] == [str(cache / "train-000000.tar"), str(cache / "train-000001.tar")]
    assert (out / "tokenizer" / "tokenizer.json").exists()  # trained on a sample of the stream, kept in the run
    stamp = (cache / "train-000000.tar").stat().st_mtime_ns
    r2 = cli("run", *args)
    assert r2.returncode == 0 and (cache / "train-000000.tar").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("case,needle", [
    ("empty", "holds no text"), ("truncated", "tok-000000.tar"), ("no-docs", "data.noise_unit")])
def test_lm_streaming_bad_input_exits_2(tmp_path, token_shards, tok, main_cli, case, needle):
    common = [f"data.val={TEXT / 'kjv_val.txt'}", f"data.test={TEXT / 'kjv_test.txt'}", f"run.out_dir={tmp_path / 'r'}",
              "data.mode=streaming", *LM]
    if case == "empty":
        (tmp_path / "empty.txt").write_text("\n\n  \n")
        args = [f"data.train={tmp_path / 'empty.txt'}", *common]
    else:
        tok_dir = tmp_path / "tokdir"
        tok.save_pretrained(str(tok_dir))
        url = write_token_shards(tmp_path, "tok", token_shards[1][:200].astype(np.int64) % VOCAB)
        path = url.replace("{000000..000000}", "000000")
        if case == "truncated":
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
        args = [f"data.train={path}", f"data.tokenizer={tok_dir}", *common, "data.seq_len=16",
                *(["data.noise_rate=0.2", "data.noise_unit=document"] if case == "no-docs" else [])]
    res = main_cli("run", *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr[-2000:]
    assert not (tmp_path / "r").exists()
