"""Weight files: bit-exact round trips, and a crafted file for every refusal."""

import json
import pickle  # tests only: to craft a malicious file that cnncli must refuse without running it
import random

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.store import weights
from cnncli.errors import FormatError, NoInputError


def make_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "layers.0.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(4).astype(np.float32),
        "layers.3.weight": rng.standard_normal((2, 36)).astype(np.float32),
        "layers.3.bias": np.array([-0.0, 1e-30], dtype=np.float32),
    }


META = {
    "arch": {"input": [3, 8, 8], "layers": [{"type": "conv2d", "out": 4, "k": 3}, {"type": "relu"}]},
    "classes": ["cat", "dog", "ünïcødé"],
    "input": {"height": 8, "width": 8, "channels": 3},
    "threshold": 0.25,
    "train": {"epochs": 3, "finished": True, "lr": 1e-3},
}


def raw_file(path, tensors, meta_strings):
    """Write a safetensors file with exactly these metadata strings, bypassing weights.save's checks."""
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta_strings))
    return path


def valid_meta_strings(tensors, **overrides):
    """Metadata strings as save() writes them, with overrides applied and metadata_sha256 recomputed after
    (unless overridden too), so each test reaches the one check it is about."""
    meta = {"format": "cnncli", "format_version": str(weights.FORMAT_VERSION),
            "tensor_sha256": weights.tensor_digest(tensors)}
    meta["classes"] = json.dumps(["a", "b"])
    meta.update(overrides)
    meta.setdefault("metadata_sha256", weights.metadata_digest(meta))
    return meta


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = make_tensors()
    weights.save(path, tensors, META)
    return path, tensors


def assert_bit_exact(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert b[name].dtype == np.float32
        assert b[name].shape == a[name].shape
        assert b[name].tobytes() == a[name].tobytes(), name


def test_round_trip_bit_exact(saved):
    path, tensors = saved
    loaded, meta = weights.load(path)
    assert_bit_exact(tensors, loaded)
    for arr in loaded.values():
        assert arr.flags.c_contiguous and arr.flags.writeable
    digest = meta.pop("metadata_sha256")
    assert meta == {**META, "format": "cnncli", "format_version": 2, "tensor_sha256": weights.tensor_digest(tensors)}
    assert len(digest) == 64


def test_load_then_save_round_trips_and_reserved_keys_are_recomputed(saved, tmp_path):
    path, tensors = saved
    loaded, meta = weights.load(path)
    other = tmp_path / "copy.safetensors"
    weights.save(other, loaded, {**meta, "tensor_sha256": "0" * 64, "format_version": 99})
    loaded2, meta2 = weights.load(other)
    assert_bit_exact(tensors, loaded2)
    assert meta2 == meta


def test_update_metadata_keeps_tensors_and_checksum(saved):
    path, tensors = saved
    weights.update_metadata(path, {"threshold": 0.75, "note": None})
    loaded, meta = weights.load(path)
    assert_bit_exact(tensors, loaded)
    assert meta["threshold"] == 0.75 and meta["note"] is None
    assert meta["classes"] == META["classes"]
    with pytest.raises(ValueError, match="reserved"):
        weights.update_metadata(path, {"tensor_sha256": "x"})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"w": np.array([1.0, np.nan], dtype=np.float32)}, "non-finite"),
        ({"w": np.array([np.inf], dtype=np.float32)}, "non-finite"),
        ({"w": np.zeros(3, dtype=np.float64)}, "float32"),
        ({"": np.zeros(3, dtype=np.float32)}, "name"),
    ],
)
def test_save_refuses_bad_tensors_and_leaves_no_file(tmp_path, bad, match):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=match):
        weights.save(path, bad, {})
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_unserialisable_metadata(tmp_path):
    with pytest.raises(ValueError, match="threshold"):
        weights.save(tmp_path / "m.safetensors", make_tensors(), {"threshold": float("nan")})
    with pytest.raises(ValueError, match="obj"):
        weights.save(tmp_path / "m.safetensors", make_tensors(), {"obj": object()})


# ---- refusals -------------------------------------------------------------------------------------------


def test_missing_path_is_noinput(tmp_path):
    with pytest.raises(NoInputError, match="not found"):
        weights.load(tmp_path / "nope.safetensors")


def test_directory_is_noinput(tmp_path):
    with pytest.raises(NoInputError, match="directory"):
        weights.load(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        weights.load(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(random.Random(1).randbytes(5000))
    with pytest.raises(FormatError, match="not a safetensors file"):
        weights.load(path)


def test_truncated_file(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(FormatError, match="truncated"):
        weights.load(path)


def test_truncated_inside_header(saved):
    path, _ = saved
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FormatError, match="truncated"):
        weights.load(path)


class _Payload:
    """Unpickling this would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"state_dict": _Payload(marker)}, protocol=protocol)
    # sanity: the payload really does run when unpickled
    pickle.loads(data).get("state_dict").close()
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(FormatError):
        weights.load(path)
    assert not marker.exists()


def test_foreign_safetensors_without_cnncli_metadata(tmp_path):
    tensors = make_tensors()
    path = raw_file(tmp_path / "m.safetensors", tensors, {"framework": "pt"})
    with pytest.raises(FormatError, match="not a cnncli weight file"):
        weights.load(path)
    path = tmp_path / "m2.safetensors"
    path.write_bytes(safetensors.numpy.save(tensors))
    with pytest.raises(FormatError, match="not a cnncli weight file"):
        weights.load(path)


def test_newer_format_version(tmp_path):
    tensors = make_tensors()
    path = raw_file(tmp_path / "m.safetensors", tensors, valid_meta_strings(tensors, format_version="3"))
    with pytest.raises(FormatError, match=r"newer cnncli \(format 3 > 2\)"):
        weights.load(path)


def test_older_format_version_without_metadata_checksum_is_refused(tmp_path):
    tensors = make_tensors()
    meta = valid_meta_strings(tensors, format_version="1")
    del meta["metadata_sha256"]  # format 1 had none
    path = raw_file(tmp_path / "m.safetensors", tensors, meta)
    with pytest.raises(FormatError, match=r"older cnncli \(format 1\).*not covered by a checksum"):
        weights.load(path)


@pytest.mark.parametrize("key, value", [("classes", '["a", "c"]'), ("threshold", "0.6"), ("format", "cnncli "),
                                        ("tensor_sha256", "0" * 64)])
def test_any_changed_metadata_string_fails_the_metadata_checksum(tmp_path, key, value):
    tensors = make_tensors()
    meta = valid_meta_strings(tensors, threshold="0.5")
    meta[key] = value
    path = raw_file(tmp_path / "m.safetensors", tensors, meta)
    with pytest.raises(FormatError, match="metadata does not match its checksum|not a cnncli weight file"):
        weights.load(path)


def test_update_metadata_refuses_a_file_that_changed_since_it_was_read(saved):
    path, tensors = saved
    _, meta = weights.load(path)
    weights.update_metadata(path, {"note": "concurrent edit"})
    before = path.read_bytes()
    with pytest.raises(weights.ChangedError, match="replaced while this command ran") as info:
        weights.update_metadata(path, {"threshold": 0.9}, expect=meta["metadata_sha256"])
    assert info.value.exit_code == 75
    assert path.read_bytes() == before


@pytest.mark.parametrize("version", ["0", "one", "", "1.0", "-1"])
def test_bad_format_version(tmp_path, version):
    tensors = make_tensors()
    path = raw_file(tmp_path / "m.safetensors", tensors, valid_meta_strings(tensors, format_version=version))
    with pytest.raises(FormatError, match="format_version"):
        weights.load(path)


@pytest.mark.parametrize("text", ["{not json", "NaN", "[1, 2", "'single'"])
def test_bad_json_metadata(tmp_path, text):
    tensors = make_tensors()
    path = raw_file(tmp_path / "m.safetensors", tensors, valid_meta_strings(tensors, classes=text))
    with pytest.raises(FormatError, match="'classes' is not valid JSON"):
        weights.load(path)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.float16, np.uint8])
def test_wrong_dtype(tmp_path, dtype):
    tensors = {**make_tensors(), "layers.0.bias": np.ones(4, dtype=dtype)}
    meta = valid_meta_strings(make_tensors())  # the digest cannot matter: dtype is refused first
    path = raw_file(tmp_path / "m.safetensors", tensors, meta)
    with pytest.raises(FormatError, match="'layers.0.bias' has dtype .*expected F32"):
        weights.load(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_tensor_with_valid_checksum(tmp_path, value):
    tensors = make_tensors()
    tensors["layers.3.weight"][1, 5] = value
    path = raw_file(tmp_path / "m.safetensors", tensors, valid_meta_strings(tensors))
    with pytest.raises(FormatError, match="'layers.3.weight' contains non-finite"):
        weights.load(path)


def test_flipped_byte_in_tensor_data(saved):
    path, _ = saved
    data = bytearray(path.read_bytes())
    # the lowest mantissa byte of the last float: stays finite, only the checksum can notice
    data[-1 - 3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="does not match its checksum"):
        weights.load(path)


def test_missing_checksum(tmp_path):
    tensors = make_tensors()
    meta = valid_meta_strings(tensors)
    del meta["tensor_sha256"]
    path = raw_file(tmp_path / "m.safetensors", tensors, meta)
    with pytest.raises(FormatError, match="tensor_sha256"):
        weights.load(path)


def test_absurd_header_length(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}" + b"\0" * 100)
    with pytest.raises(FormatError, match="implausible header length"):
        weights.load(path)


def test_oversized_file_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as f:  # sparse: no real disk used
        f.truncate(weights.MAX_FILE_BYTES + 1)
    with pytest.raises(FormatError, match="too large"):
        weights.load(path)


# ---- property tests -------------------------------------------------------------------------------------

_VALID = safetensors.numpy.save(
    make_tensors(), metadata=valid_meta_strings(make_tensors(), threshold="0.5", arch=json.dumps(META["arch"]))
)

_HEADER_LEN = int.from_bytes(_VALID[:8], "little")
_BODY = _VALID[8 + _HEADER_LEN :]

_edit = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, _HEADER_LEN - 1), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, _HEADER_LEN), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), st.integers(0, _HEADER_LEN), st.sampled_from([b'"', b"{", b"}", b",", b"\\", b"[1]"])),
    st.tuples(st.just("delete"), st.integers(0, _HEADER_LEN - 1), st.integers(1, 8)),
)


def _apply(data: bytearray, op) -> bytearray:
    kind, pos, arg = op
    pos = min(pos, len(data))
    if kind == "flip" and pos < len(data):
        data[pos] ^= arg
    elif kind == "insert":
        data[pos:pos] = arg
    elif kind == "delete":
        del data[pos : pos + arg]
    return data


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    edits=st.lists(_edit, min_size=1, max_size=4),
    fix_length=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, len(_VALID))),
)
def test_mutated_header_only_ever_raises_format_error(tmp_path, edits, fix_length, cut):
    header = bytearray(_VALID[8 : 8 + _HEADER_LEN])
    for op in edits:
        header = _apply(header, op)
    # with fix_length the length prefix matches the edited JSON, so the edits reach the header parser
    length = len(header) if fix_length else _HEADER_LEN
    data = length.to_bytes(8, "little") + bytes(header) + _BODY
    if cut is not None:
        data = data[:cut]
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    try:
        weights.load(path)
    except FormatError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_keys = st.text(min_size=1, max_size=12).filter(lambda k: k not in weights.RESERVED_KEYS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(_keys, _json, max_size=5))
def test_random_metadata_round_trips(tmp_path, meta):
    path = tmp_path / "m.safetensors"
    weights.save(path, make_tensors(), meta)
    _, loaded = weights.load(path)
    assert {k: v for k, v in loaded.items() if k not in weights.RESERVED_KEYS} == meta


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=5))
def test_random_raw_metadata_strings_only_ever_raise_format_error(tmp_path, raw):
    tensors = make_tensors()
    meta = {**raw, **valid_meta_strings(tensors)} if len(raw) % 2 else {**valid_meta_strings(tensors), **raw}
    meta["metadata_sha256"] = weights.metadata_digest(meta)  # so the raw strings reach the JSON decoding
    path = raw_file(tmp_path / "m.safetensors", tensors, meta)
    try:
        _, loaded = weights.load(path)
    except FormatError:
        return
    for key, text in raw.items():  # success means every caller key was valid JSON and came back decoded
        if key not in weights.RESERVED_KEYS:
            assert loaded[key] == json.loads(text)
