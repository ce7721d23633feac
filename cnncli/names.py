"""File names and messages as single printable lines, for stderr and line-based output formats."""


def one_line(text) -> str:
    """str(text) with backslash, tab, CR and LF written as \\\\ \\t \\r \\n, and bytes that are not UTF-8
    (os.fsdecode's surrogates) as \\xNN: always one line of valid UTF-8, from which the name can be recovered."""
    s = str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
