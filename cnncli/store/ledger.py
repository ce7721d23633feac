"""The ledger of `predict --ledger FILE`: an SQLite database of what was already scored, by which model.

One row per (image content, model): results(content_sha256, model_sha256, path, label, probability,
probabilities, threshold, scored_at). content_sha256 is SHA-256 of the image file's bytes, model_sha256 the
weight file's checksum, so a renamed or copied image is still known, an edited one is new, and a new model
scores everything again. Rows are added one batch per transaction (INSERT OR IGNORE on the primary key) in
WAL mode: a run killed at any point leaves every committed batch whole and nothing of the others, and a rerun
adds exactly what is missing. Two runs on one ledger take turns for each transaction (busy timeout).
"""

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from cnncli.errors import DataError, LockedError, OutputError, WriteError

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    content_sha256 TEXT NOT NULL,   -- SHA-256 (hex) of the image file's bytes
    model_sha256   TEXT NOT NULL,   -- the weight file's checksum (cnncli info: metadata_sha256)
    path           TEXT NOT NULL,   -- the path it was first scored under
    label          TEXT NOT NULL,   -- the label given then (threshold, --uncertain band of that run)
    probability    REAL NOT NULL,   -- the probability shown with that label
    probabilities  TEXT NOT NULL,   -- JSON object {class: probability}
    ood_score      REAL NOT NULL,   -- the out-of-distribution score predict prints (higher: less familiar)
    threshold      REAL,            -- two-class models: the threshold used; NULL otherwise
    scored_at      TEXT NOT NULL,   -- UTC, ISO 8601
    PRIMARY KEY (content_sha256, model_sha256)
) WITHOUT ROWID
"""
BUSY_TIMEOUT = 600.0  # seconds a run waits for another run's transaction before giving up (exit 75)
_CHUNK = 1 << 20


def file_sha256(path):
    """SHA-256 hex digest of a file's bytes; OSError when it cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fail(path, exc):
    text = str(exc)
    if "locked" in text or "busy" in text:
        return LockedError(f"{path}: the ledger is busy (another run held it for {BUSY_TIMEOUT:g} s)")
    if "not a database" in text or "malformed" in text or "no such column" in text:
        return DataError(f"{path}: not a cnncli ledger ({text})")
    if "unable to open" in text or "readonly" in text:
        return OutputError(f"{path}: cannot open the ledger for writing ({text})")
    return WriteError(f"{path}: ledger write failed ({text})")


COLUMNS = ("content_sha256", "model_sha256", "path", "label", "probability", "probabilities", "ood_score",
           "threshold", "scored_at")


def _refuse_foreign(db, path):
    """DataError unless the database is empty (a new ledger) or holds exactly a ledger's `results` table: a
    mistyped --ledger naming another program's SQLite file must not get a table or WAL mode added to it."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    if not tables:
        return
    columns = tuple(r[1] for r in db.execute("PRAGMA table_info(results)")) if tables == ["results"] else ()
    if columns != COLUMNS:
        db.close()
        raise DataError(f"{path}: not a cnncli ledger (an SQLite database with other tables: "
                        f"{', '.join(sorted(tables)[:5])}); give a new file name or an existing ledger")


class Ledger:
    """An open ledger for one model: lookup(content) -> probabilities, add(rows) -> one transaction."""

    def __init__(self, path, model_sha256, classes):
        self.path, self.model, self.classes = Path(path), model_sha256, list(classes)
        if self.path.is_dir():
            raise OutputError(f"{self.path}: --ledger is a directory")
        if self.path.is_symlink() and not self.path.exists():  # SQLite would create the ledger where it points
            raise OutputError(f"{self.path}: --ledger is a symlink to a missing file (a new ledger is not "
                              "created through a link; give its real path)")
        if self.path.exists() and not self.path.is_file():  # /dev/null, a FIFO: SQLite would add files beside it
            raise OutputError(f"{self.path}: --ledger is not a regular file")
        # predict looks inputs up on its reading thread and commits on the main one: one lock serialises them.
        self.lock = threading.Lock()
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self.db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None,
                                          check_same_thread=False)
                self._set_up()
                return
            except sqlite3.Error as exc:
                if getattr(self, "db", None) is not None:
                    self.db.close()
                # Two runs opening a new ledger at once: SQLite reports some lock conflicts of the switch to
                # WAL at once, without its busy timeout; they pass in moments, so try again until the timeout.
                failure = _fail(self.path, exc)
                if not isinstance(failure, LockedError) or time.monotonic() > deadline:
                    raise failure from None
                time.sleep(0.05)

    def _set_up(self):
        _refuse_foreign(self.db, self.path)  # before anything is written: another program's database stays as it is
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed batch survives a crash of the machine too
        self.db.execute(SCHEMA)
        self.db.execute("SELECT content_sha256, model_sha256, probabilities, ood_score FROM results LIMIT 0")

    def lookup(self, content_sha256):
        """(stored probabilities: list of floats in the model's class order, OOD score) or None if not seen."""
        try:
            with self.lock:
                hit = self.db.execute("SELECT probabilities, ood_score FROM results "
                                      "WHERE content_sha256=? AND model_sha256=?",
                                      (content_sha256, self.model)).fetchone()
        except sqlite3.Error as exc:
            raise _fail(self.path, exc) from None
        if hit is None:
            return None
        probs = json.loads(hit[0])
        return [float(probs[c]) for c in self.classes], float(hit[1])

    def add(self, rows):
        """rows: [(content_sha256, path, label, probability, probabilities (K,), ood, threshold or None)], one
        transaction; a row already present (same content and model) is left as it is."""
        if not rows:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = [(h, self.model, path, label, float(prob),
                 json.dumps({c: float(v) for c, v in zip(self.classes, p)}), float(ood), threshold, now)
                for h, path, label, prob, p, ood, threshold in rows]
        with self.lock:
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", data)
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise _fail(self.path, exc) from None

    def close(self):
        with self.lock:
            self.db.close()


def export_rows(path):
    """Every row of a ledger as dicts, ordered by scored_at then path; DataError/NoInput handled by caller."""
    db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    try:
        cur = db.execute("SELECT * FROM results ORDER BY scored_at, path, model_sha256")
        names = [d[0] for d in cur.description]
        for values in cur:
            yield dict(zip(names, values))
    except sqlite3.Error as exc:
        raise _fail(Path(path), exc) from None
    finally:
        db.close()
