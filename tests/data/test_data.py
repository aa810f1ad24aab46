import io
import tarfile

import numpy as np
import pytest
import webdataset as wds

from swift_scale.data import DataError, build_index, expand_shards, load_split, symmetric_label_noise
from swift_scale.data.writers import write_shards
from tests.conftest import corrupt_shard


def test_shard_table_and_global_ids(tmp_path):
    images = np.arange(25 * 8 * 8, dtype=np.uint8).reshape(25, 8, 8)
    labels = np.arange(25) % 3
    pattern = write_shards(tmp_path, "train", images, labels, maxcount=10)
    urls = expand_shards(pattern)
    assert len(urls) == 3
    index = build_index(urls)
    assert index.counts == [10, 10, 5] and index.offsets == [0, 10, 20] and index.total == 25
    ld = load_split(index)
    x, y = ld.images, ld.labels
    assert ld.valid.all() and ld.errors == []
    np.testing.assert_array_equal(x[:, 0], images)  # row = global id = offset + position
    np.testing.assert_array_equal(y, labels)


def test_reads_what_shardwriter_wrote(tmp_path):
    # a shard written directly with webdataset's own writer, as a user would
    with wds.ShardWriter(str(tmp_path / "u-%06d.tar"), maxcount=4, verbose=0) as sink:
        for i in range(6):
            sink.write({"__key__": f"k{i}", "png": np.full((5, 5), i * 10, np.uint8), "cls": i % 2})
    index = build_index(expand_shards(str(tmp_path / "u-{000000..000001}.tar")))
    ld = load_split(index)
    x, y = ld.images, ld.labels
    assert x.shape == (6, 1, 5, 5) and list(y) == [0, 1, 0, 1, 0, 1] and x[3, 0, 0, 0] == 30


def test_missing_truncated_and_pipe(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        expand_shards(str(tmp_path / "nope-{000000..000001}.tar"), field="data.train")
    with pytest.raises(DataError, match="allow_pipe"):
        expand_shards("pipe:curl http://x/a.tar")
    pattern = write_shards(tmp_path, "t", np.zeros((20, 8, 8), np.uint8), np.zeros(20), maxcount=20)
    path = expand_shards(pattern)[0]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2 + 100])
    with pytest.raises(DataError, match="truncated|corrupt"):
        build_index([path])


def test_missing_label_field_is_named(tmp_path):
    path = tmp_path / "x-000000.tar"
    with wds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "a", "png": np.zeros((4, 4), np.uint8)})
    with pytest.raises(DataError, match="lacks field 'cls'"):
        load_split(build_index([str(path)]), on_error="fail")
    assert tarfile.is_tarfile(path)


def test_symmetric_noise_exact_and_reproducible():
    labels = np.arange(1000) % 10
    noisy, flipped = symmetric_label_noise(labels, 0.4, 10, seed=3)
    assert len(flipped) == 400
    assert np.all(noisy[flipped] != labels[flipped])
    mask = np.ones(1000, bool)
    mask[flipped] = False
    assert np.all(noisy[mask] == labels[mask])
    noisy2, flipped2 = symmetric_label_noise(labels, 0.4, 10, seed=3)
    np.testing.assert_array_equal(noisy, noisy2)
    # new classes are spread over the other classes
    assert len(np.unique((noisy[flipped] - labels[flipped]) % 10)) == 9


def test_bad_samples_skipped_and_counted_by_url_and_key(tmp_path):
    path = tmp_path / "c-000000.tar"
    corrupt_shard(path)
    index = build_index([str(path)])
    assert index.total == 6
    ld = load_split(index, on_error="skip")
    assert ld.valid.tolist() == [True, False, False, False, False, True]
    assert [(e["url"], e["key"]) for e in ld.errors] == [(str(path), k) for k in ("badpng", "nolabel", "shape", "label")]
    assert "cannot be decoded" in ld.errors[0]["reason"] and "lacks field 'cls'" in ld.errors[1]["reason"]
    assert ld.labels[5] == 3 and ld.images[5, 0, 0, 0] == 9  # ids after the bad ones keep their rows
    with pytest.raises(DataError, match="'badpng' cannot be decoded"):
        load_split(index, on_error="fail")


def _tar_with(path, names_and_data, fmt):
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in names_and_data:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_header_reader_matches_webdataset(tmp_path, fmt):
    """tar_samples groups members exactly as webdataset does (long names, ustar prefixes, upper-case suffixes,
    __meta__ files), and skipping a sample never reads its payload but keeps positions."""
    from swift_scale.data.shards import tar_samples

    deep = "d" * 60 + "/" + "e" * 60  # > 100 characters: pax / GNU long name / ustar prefix
    members = []
    for i in range(7):
        key = f"{deep}/s{i:03d}" if i % 2 else f"s{i:03d}"
        members += [(f"{key}.PNG", bytes([i]) * (i * 100 + 1)), (f"{key}.cls", str(i).encode())]
    members.insert(4, ("__meta__", b"{}"))  # skipped by webdataset, as are __x__/… folders
    members.insert(9, ("__info__/a.json", b"{}"))
    path = str(tmp_path / "x.tar")
    _tar_with(path, members, fmt)
    ref = list(wds.DataPipeline(wds.SimpleShardList([path]), wds.tarfile_to_samples()))
    got = [s for _, s in tar_samples(path)]
    assert len(got) == len(ref) == 7
    for a, b in zip(got, ref):
        assert a["__key__"] == b["__key__"] and a["png"] == b["png"] and a["cls"] == b["cls"]
    asked = []
    odd = list(tar_samples(path, lambda pos: asked.append(pos) or pos % 2 == 1))
    assert asked == list(range(7)) and [p for p, _ in odd] == [1, 3, 5]
    assert [s["png"] for _, s in odd] == [ref[p]["png"] for p in (1, 3, 5)]
    assert [p for p, _ in tar_samples(path, lambda pos: None if pos == 4 else True)] == [0, 1, 2, 3]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_fixed_size_samples_are_read_by_stride(tmp_path, fmt):
    """After one whole scan, a tar whose samples all take the same bytes is read by seeking straight to the
    samples wanted: the same samples as a scan, and a rejected sample's header is never read again."""
    import os

    from swift_scale.data import shards

    deep = "d" * 60 + "/" + "e" * 60  # long names: each sample is a pax / GNU name record + two members
    members = []
    for i in range(9):
        members += [(f"{deep}/s{i:03d}.tokens.npy", bytes([i]) * 300), (f"{deep}/s{i:03d}.cls", b"%d" % i)]
    path = str(tmp_path / "fixed.tar")
    _tar_with(path, members, fmt)
    scanned = [s for _, s in shards.tar_samples(path)]  # the whole scan records the stride
    layout = shards._STRIDES[shards._file_key(path)]
    assert layout is not None and layout.count == 9
    assert [s for _, s in shards.tar_samples(path)] == scanned
    odd = list(shards.tar_samples(path, lambda pos: pos % 2 == 1))
    assert [p for p, _ in odd] == [1, 3, 5, 7] and [s for _, s in odd] == scanned[1::2]
    assert [p for p, _ in shards.tar_samples(path, lambda pos: None if pos == 3 else pos > 0)] == [1, 2]

    stat = os.stat(path)
    with open(path, "r+b") as f:  # break sample 2's first header, keeping size and mtime
        f.seek(layout.first + 2 * layout.stride + 148)
        f.write(b"9999999\0")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [s for _, s in shards.tar_samples(path, lambda pos: pos % 2 == 1)] == scanned[1::2]
    with pytest.raises(DataError, match="fixed.tar: corrupt or truncated tar"):
        list(shards.tar_samples(path, lambda pos: pos == 2))
    shards._STRIDES.clear()  # a new process scans again and sees the damage
    with pytest.raises(DataError, match="fixed.tar: corrupt or truncated tar"):
        list(shards.tar_samples(path, lambda pos: pos % 2 == 1))


def test_stride_is_only_kept_for_fixed_size_samples_of_the_same_file(tmp_path):
    from swift_scale.data import shards

    path = str(tmp_path / "v.tar")
    _tar_with(path, [(f"s{i}.bin", b"x" * (100 + 600 * (i == 2))) for i in range(4)], tarfile.PAX_FORMAT)
    assert len(list(shards.tar_samples(path))) == 4
    before = shards._file_key(path)
    assert shards._STRIDES[before] is None  # sample 2 is longer: scanned every time
    assert [p for p, _ in shards.tar_samples(path, lambda pos: pos >= 2)] == [2, 3]
    _tar_with(path, [(f"t{i}.bin", b"y" * 100) for i in range(5)], tarfile.PAX_FORMAT)  # rewritten: new layout
    got = list(shards.tar_samples(path))
    assert [s["__key__"] for _, s in got] == [f"t{i}" for i in range(5)]
    assert shards._STRIDES[before] is None and shards._STRIDES[shards._file_key(path)].count == 5


@pytest.mark.parametrize("arr", [np.arange(7, dtype=np.uint16), np.arange(12, dtype=">i4").reshape(3, 4),
                                 np.asfortranarray(np.arange(6.0).reshape(2, 3)), np.zeros((0, 3), np.int8),
                                 np.array(5, np.int64)])
def test_read_npy_matches_np_load(arr):
    from swift_scale.data.decode import read_npy

    buf = io.BytesIO()
    np.save(buf, arr)
    got = read_npy(buf.getvalue())
    ref = np.load(io.BytesIO(buf.getvalue()), allow_pickle=False)
    assert got.dtype == ref.dtype and got.shape == ref.shape and np.array_equal(got, ref)
    with pytest.raises(ValueError):
        read_npy(buf.getvalue()[:-1] if arr.size else buf.getvalue() + b"x")
    obj = io.BytesIO()
    np.save(obj, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        read_npy(obj.getvalue())
    with pytest.raises(ValueError, match="not a .npy"):
        read_npy(b"PK\x03\x04" + bytes(20))


def test_header_reader_rejects_corrupt_headers(tmp_path):
    from swift_scale.data.shards import build_index

    path = tmp_path / "x.tar"
    _tar_with(path, [(f"k{i}.cls", b"1") for i in range(4)], tarfile.PAX_FORMAT)
    data = bytearray(path.read_bytes())
    data[1024 + 3] ^= 0xFF  # a byte of the second member's name: its checksum no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"x.tar: corrupt or truncated tar \(header checksum mismatch at byte 1024"):
        build_index([str(path)])
