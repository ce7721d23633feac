"""`predict --sort-into DIR [--copy]`: put each classified image into DIR/<label>/ for people to browse.

Each image is hard-linked (same file system), else symlinked to its absolute path, or with --copy copied, to
DIR/<label>/<its file name>. Nothing is ever moved, replaced or written into: a new entry is created only
where no file exists (link(2) and symlink(2) refuse to replace, and a copy is written to a temp file first,
then linked into place). A name already taken by another file gets the first free `STEM~2.EXT`, `STEM~3.EXT`
... in input order, so names are deterministic; a name already holding this very image (the same inode, a
symlink to it, or for --copy identical bytes) is reused, so a rerun adds nothing.
"""

import filecmp
import os
import tempfile
from pathlib import Path

from cnncli.errors import OutputError, WriteError, one_line

MAX_CLASH = 10000  # names tried per image before giving up


def _same(src, dest, copy):
    try:
        if dest.is_symlink():
            return os.readlink(dest) == os.path.abspath(src)
        if os.path.samefile(src, dest):
            return True
        return copy and filecmp.cmp(src, dest, shallow=False)
    except OSError:
        return False


def _copy_new(src, dest):
    """Copy src to dest, which must not exist (FileExistsError otherwise); dest never appears half-written."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while chunk := inp.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, dest)
    finally:
        os.unlink(tmp)


class Sorter:
    """Places images into root/<label>/; see the module docstring for the rules."""

    def __init__(self, root, copy=False):
        self.root, self.copy = Path(root), copy
        self.made = set()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{root}: --sort-into: cannot create the folder ({exc.strerror or exc})") from None

    def _folder(self, label):
        if label in ("", ".", "..") or "/" in label or "\0" in label:
            raise OutputError(f"--sort-into: label {one_line(label)!r} cannot be a folder name")
        folder = self.root / label
        if label not in self.made:
            folder.mkdir(exist_ok=True)
            self.made.add(label)
        return folder

    def _make(self, src, dest):
        if self.copy:
            _copy_new(src, dest)
            return
        try:
            os.link(src, dest)
        except FileExistsError:
            raise
        except OSError:  # another file system, or links not allowed there: a symlink to the absolute path
            os.symlink(os.path.abspath(src), dest)

    def place(self, src, label):
        """Link or copy image src into root/label/; returns the path used."""
        try:
            folder = self._folder(label)
            stem, ext = os.path.splitext(os.path.basename(src))
            for k in range(1, MAX_CLASH + 1):
                dest = folder / (f"{stem}{ext}" if k == 1 else f"{stem}~{k}{ext}")
                if os.path.lexists(dest):
                    if _same(src, dest, self.copy):
                        return dest
                    continue
                try:
                    self._make(src, dest)
                    return dest
                except FileExistsError:  # created meanwhile by another run: look at it again
                    if _same(src, dest, self.copy):
                        return dest
            raise WriteError(f"{one_line(src)}: --sort-into: {MAX_CLASH} names taken in {folder}")
        except OSError as exc:
            raise WriteError(f"{one_line(src)}: --sort-into {self.root}: {exc.strerror or exc}") from None
