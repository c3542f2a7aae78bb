"""A report as a list of blocks, rendered twice: Markdown (images linked) and self-contained HTML (images inline).

One structure for both formats means the two can never disagree. Inline text may use ``**bold**`` and
```code```; everything else is escaped for HTML.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")


def _inline_html(text: str) -> str:
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        out.append(f"<b>{html.escape(m.group(1))}</b>" if m.group(1) is not None
                   else f"<code>{html.escape(m.group(2))}</code>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def cell(value: Any, digits: int = 3) -> str:
    """How a number appears in a table: fixed digits, a dash for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def callout(self, text: str) -> None:
        """A statement the reader must not miss (synthetic data, untrained weights)."""
        self.blocks.append(("callout", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (header, [[cell(v) for v in row] for row in rows])))

    def images(self, paths: list[Path], caption: str, wide: bool = False) -> None:
        """The figures that exist, under one caption; ``wide``: one per line at full width in HTML (a row of
        panels side by side would be unreadable at the third of the page an ordinary figure gets)."""
        existing = [Path(p) for p in paths if Path(p).is_file()]
        if existing:
            self.blocks.append(("images", (existing, caption, wide)))

    def markdown(self, base: Path) -> str:
        """Markdown with images linked relative to ``base`` (the folder the file is written to)."""
        lines = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                lines += [f"{'#' * value[0]} {value[1]}", ""]
            elif kind == "text":
                lines += [value, ""]
            elif kind == "callout":
                lines += [f"> **{value}**", ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                header, rows = value
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
            elif kind == "images":
                paths, caption, _ = value
                lines += [" ".join(f"![{caption}]({os.path.relpath(p, base)})" for p in paths), "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self) -> str:
        """One HTML file with every image embedded as a data URI: it can be mailed or archived alone."""
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{_inline_html(value[1])}</h{value[0]}>")
            elif kind == "text":
                body.append(f"<p>{_inline_html(value)}</p>")
            elif kind == "callout":
                body.append(f'<p class="callout">{_inline_html(value)}</p>')
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in value) + "</ul>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in header)
                trs = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "images":
                paths, caption, wide = value
                imgs = "".join(f'<img alt="{html.escape(caption)}" src="data:image/{_mime(p)};base64,'
                               f'{base64.b64encode(p.read_bytes()).decode()}">' for p in paths)
                css = ' class="wide"' if wide else ""
                body.append(f'<figure{css}>{imgs}<figcaption>{html.escape(caption)}</figcaption></figure>')
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
                f"</title><style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _mime(path: Path) -> str:
    return "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix.lower().lstrip(".")


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left}th{background:#f2f2f2}
.callout{background:#fff3cd;border-left:5px solid #d39e00;padding:.7em 1em;font-weight:600}
figure{margin:.5em 0 1.5em}figure img{max-width:32%;margin:0 .5% .5% 0;border:1px solid #ddd}
figure.wide img{display:block;max-width:100%}
figcaption{font-size:.85em;color:#555}code{background:#f4f4f4;padding:0 .2em}
"""
