"""The `check` job: audit a labeled folder (data/audit.py) and render the findings for people.

No typer or rich here. Exit status (README "Checking data"): 0 when no group of duplicates crosses splits
or classes, EXIT_GATE (3) when one does (a leak between train and val/test, or one picture under two labels).
"""

from cnncli.data import audit
from cnncli.errors import EXIT_GATE, EXIT_OK, one_line


def exit_code(report) -> int:
    """3 when a duplicate group crosses splits or classes, else 0."""
    return EXIT_GATE if report["leaks"] or report["conflicts"] else EXIT_OK


def _group_lines(groups, root, title):
    if not groups:
        return [f"{title}: none"]
    out = [f"{title}: {len(groups)} group{'s' if len(groups) > 1 else ''}"]
    for g in groups:
        tags = [t for t, on in (("LEAK across splits", g["cross_split"]), ("CONFLICT across classes", g["cross_class"]))
                if on]
        out.append("  - " + (", ".join(tags) if tags else "same split and class"))
        out += [f"      {one_line(audit.relative(f['path'], root))}" for f in g["files"]]
    return out


def format_text(report) -> str:
    """The audit report as plain text lines."""
    root = report["root"]
    out = [f"data: {one_line(root)} ({report['layout']} layout, {report['files']} image files)"]
    for split, counts in report["counts"].items():
        imb = report["imbalance"][split]
        line = f"{split}: " + ", ".join(f"{one_line(c)} {n}" for c, n in counts.items())
        if imb["flagged"]:
            big, small = one_line(imb["largest"][0]), one_line(imb["smallest"][0])
            line += f"  (imbalanced: {big} / {small} = {imb['ratio']:.1f}x)"
        out.append(line)
    out += _group_lines(report["exact_duplicates"], root, "exact duplicates")
    out += _group_lines(report["near_duplicates"], root, "near duplicates")
    out.append(f"unreadable files: {len(report['unreadable'])}")
    out += [f"  {one_line(audit.relative(u['path'], root))}: {one_line(u['reason'])}" for u in report["unreadable"]]
    out.append(f"tiny images (a side under {audit.TINY} px): {len(report['tiny'])}")
    out += [f"  {one_line(audit.relative(t['path'], root))}: {t['width']}x{t['height']}" for t in report["tiny"][:20]]
    sz = report["sizes"]
    if sz["width"]:
        out.append(f"sizes: width {sz['width']['min']}-{sz['width']['max']} (median {sz['width']['median']:g}), "
                   f"height {sz['height']['min']}-{sz['height']['max']} (median {sz['height']['median']:g}); "
                   "most common " + ", ".join(f"{s} ({n})" for s, n in sz["most_common"]))
    out.append("modes: " + ", ".join(f"{m} {n}" for m, n in report["modes"].items()))
    out.append("formats: " + ", ".join(f"{m} {n}" for m, n in report["formats"].items()))
    verdict = (f"FOUND {report['leaks']} duplicate group(s) across splits and {report['conflicts']} across classes"
               if exit_code(report) else "no duplicates across splits or classes")
    out.append(f"result: {verdict}")
    return "\n".join(out) + "\n"
