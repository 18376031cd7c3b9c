"""Helpers shared by the commands: context settings, JSON output, stderr messages, parsers."""

from __future__ import annotations

import json

import click

from ..errors import BadMask, BadParameter

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def err(msg: str) -> None:
    """One line on stderr (progress and status messages; results go to stdout)."""
    click.echo(msg, err=True)


def parse_box(text: str | None):
    """``x0,y0,x1,y1`` → four floats (None stays None)."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4:
        raise BadMask(f"a box is x0,y0,x1,y1 in image pixels, got {text!r}", param="box")
    return vals


def parse_bytes(text: str, param: str = "memory") -> int:
    """``512M``, ``2G``, ``1.5t``, ``4096`` → bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise BadParameter(f"cannot read a size from {text!r} (use e.g. 512M or 2G)",
                           param=param) from None


def write_csv(rows: list[dict], dest) -> None:
    """Rows of a table (dicts with the same keys) as CSV to a file, or stdout for ``-``."""
    import csv
    import io

    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if str(dest) == "-":
        click.echo(buf.getvalue(), nl=False)
        return
    try:
        with open(dest, "w", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())
    except OSError as e:
        from ..errors import OutputError

        raise OutputError(f"cannot write {dest}: {e.strerror or e}", param="csv") from None
