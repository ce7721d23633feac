"""Crash-safe output: atomic replace under failures and SIGKILL, pre-flight checks, and the output lock."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cnncli.store import atomic

from cnncli.store import weights
from cnncli.store.atomic import OutputLock, atomic_write_bytes, check_writable_target
from cnncli.errors import LockedError, OutputError, WriteError

REPO = Path(__file__).resolve().parents[1]


def child(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start a Python child running `code` against this checkout of cnncli."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# ---- atomic_write_bytes ---------------------------------------------------------------------------------


def test_atomic_write_creates_and_replaces_keeping_mode(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's private 0600
    target.chmod(0o640)
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert target.stat().st_mode & 0o777 == 0o640
    assert leftovers(tmp_path, {"out.bin"}) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_into_missing_directory(tmp_path):
    with pytest.raises(WriteError, match="cannot write: directory does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "out.bin", b"x")


@pytest.mark.parametrize("err, reason", [(errno.ENOSPC, "disk full"), (errno.EIO, "I/O error")])
def test_failure_before_replace_keeps_old_file_and_removes_temp(tmp_path, monkeypatch, err, reason):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")

    def failing_fsync(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(WriteError) as info:
        atomic_write_bytes(target, b"new contents that never land")
    assert str(info.value) == f"{target}: cannot write: {reason}"
    assert target.read_bytes() == b"old contents"
    assert leftovers(tmp_path, {"out.bin"}) == []


def test_interrupt_removes_temp_and_propagates(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"x")
    assert leftovers(tmp_path, set()) == []


def test_file_size_limit_keeps_previous_weights(tmp_path):
    """EFBIG without root: the child lowers RLIMIT_FSIZE and ignores SIGXFSZ, then saves bigger tensors."""
    target = tmp_path / "model.safetensors"
    small = {"w": np.arange(256, dtype=np.float32)}
    weights.save(target, small, {"version": "old"})
    before = target.read_bytes()
    proc = child(
        """
        import resource, signal, sys
        import numpy as np
        from cnncli.store import weights
        from cnncli.errors import WriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
        try:
            weights.save(sys.argv[1], {"w": np.ones((256, 1024), np.float32)}, {"version": "new"})
        except WriteError as exc:
            print(exc, file=sys.stderr)
            sys.exit(exc.exit_code)
        """,
        str(target),
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 74, err
    assert err.strip() == f"{target}: cannot write: file too large"
    assert target.read_bytes() == before
    tensors, meta = weights.load(target)
    assert tensors["w"].tobytes() == small["w"].tobytes() and meta["version"] == "old"
    assert leftovers(tmp_path, {"model.safetensors"}) == []


SAVER = """
import sys
import numpy as np
from cnncli.store import weights
path = sys.argv[1]
i = 0
print("ready", flush=True)
while True:
    rows = 256 * (1 + i % 3)  # 1, 2 or 3 MB: consecutive versions differ in size
    weights.save(path, {"w": np.full((rows, 1024), i, dtype=np.float32)}, {"i": i, "rows": rows})
    i += 1
"""


def test_sigkill_mid_save_never_leaves_a_half_file(tmp_path):
    target = tmp_path / "model.safetensors"
    weights.save(target, {"w": np.full((4, 4), -1, dtype=np.float32)}, {"i": -1, "rows": 4})
    rng = random.Random(1234)
    seen = set()
    for _ in range(5):
        proc = child(SAVER, str(target))
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        tensors, meta = weights.load(target)  # raises FormatError if torn
        assert tensors["w"].shape == (meta["rows"], 1024 if meta["i"] >= 0 else 4)
        assert (tensors["w"] == meta["i"]).all()
        seen.add(meta["i"])
        # a kill may strand a hidden temp file; it must never be mistaken for the target
        for name in leftovers(tmp_path, {"model.safetensors"}):
            assert name.startswith(".model.safetensors.") and name.endswith(".tmp"), name
    assert len(seen - {-1}) >= 1, "the children never completed a save; the test proved nothing"


# ---- check_writable_target ------------------------------------------------------------------------------


def test_check_target_missing_directory(tmp_path):
    with pytest.raises(OutputError, match="directory does not exist"):
        check_writable_target(tmp_path / "missing" / "m.safetensors", overwrite=False)


def test_check_target_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_writable_target(tmp_path / "file" / "m.safetensors", overwrite=True)


def test_check_target_exists_needs_overwrite(tmp_path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match=r"already exists \(use --overwrite\)"):
        check_writable_target(target, overwrite=False)
    check_writable_target(target, overwrite=True)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path, {"m.safetensors"}) == []  # the probe file is gone


def test_check_target_is_a_directory(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        check_writable_target(tmp_path, overwrite=True)


def test_check_target_fine(tmp_path):
    check_writable_target(tmp_path / "new.safetensors", overwrite=False)
    assert leftovers(tmp_path, set()) == []


def test_check_target_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): permission bits do not stop writes")
        with pytest.raises(OutputError, match="cannot create files in .*: permission denied"):
            check_writable_target(ro / "m.safetensors", overwrite=False)
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_check_target_unwritable_directory_even_as_root():
    # /proc/self is a directory where nobody, not even root, can create a file
    with pytest.raises(OutputError, match="cannot create files in /proc/self"):
        check_writable_target("/proc/self/m.safetensors", overwrite=False)


# ---- OutputLock -----------------------------------------------------------------------------------------

HOLDER = """
import sys
from cnncli.store.atomic import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""

WAITER = """
import sys, time
from cnncli.store.atomic import OutputLock
from cnncli.errors import LockedError
start = time.monotonic()
try:
    with OutputLock(sys.argv[1], wait=float(sys.argv[2])):
        print("acquired", round(time.monotonic() - start, 2), flush=True)
except LockedError as exc:
    print(exc, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def test_lock_held_by_another_process_fails_at_once_naming_the_pid(tmp_path):
    target = tmp_path / "m.safetensors"
    holder = child(HOLDER, str(target))
    try:
        assert holder.stdout.readline().strip() == "locked"
        info = json.loads(Path(f"{target}.lock").read_text())
        assert info["pid"] == holder.pid and info["argv"][1:] == [str(target)]
        start = time.monotonic()
        with pytest.raises(LockedError) as exc:
            OutputLock(target).acquire()
        assert time.monotonic() - start < 1.0
        msg = str(exc.value)
        assert msg.startswith(f"{target} is being written by another cnncli run (pid {holder.pid} on ")
        assert "started " in msg and "\n" not in msg
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0


def test_waiting_for_the_lock_succeeds_after_release(tmp_path):
    target = tmp_path / "m.safetensors"
    holder = child(HOLDER, str(target))
    assert holder.stdout.readline().strip() == "locked"
    start = time.monotonic()
    with pytest.raises(LockedError):
        OutputLock(target, wait=0.3).acquire()
    assert time.monotonic() - start >= 0.3
    holder.stdin.write("\n")
    holder.stdin.flush()
    with OutputLock(target, wait=20) as lock:
        assert json.loads(lock.lock_path.read_text())["pid"] == os.getpid()
        assert holder.stdout.readline().strip() == "released"
    holder.communicate(timeout=30)
    assert not Path(f"{target}.lock").exists()  # removed on release


def test_other_process_is_refused_while_we_hold_it_then_gets_it(tmp_path):
    target = tmp_path / "m.safetensors"
    with OutputLock(target):
        waiter = child(WAITER, str(target), "0")
        _, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 75
        assert f"(pid {os.getpid()} on " in err
    waiter = child(WAITER, str(target), "0")
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert out.startswith("acquired")


def test_lock_is_freed_when_the_holder_is_killed(tmp_path):
    target = tmp_path / "m.safetensors"
    holder = child(HOLDER, str(target))
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.communicate(timeout=30)
    assert Path(f"{target}.lock").exists()  # stale file left by SIGKILL ...
    with OutputLock(target):  # ... but the kernel dropped the flock, so it does not block anyone
        pass


def test_same_process_second_lock_is_refused(tmp_path):
    target = tmp_path / "m.safetensors"
    with OutputLock(target):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            OutputLock(target).acquire()


def test_lock_in_missing_directory_is_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot create lock file"):
        OutputLock(tmp_path / "missing" / "m.safetensors").acquire()
