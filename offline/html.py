"""HTML building blocks of the reports: the page shell and its style, escaping, tables,
figures and number cells.

Shared by the training report (`offline.report`), the bundle comparison
(`offline.compare`) and the backtest report (`segstream.backtest_report`); each report
owns its sections and words, this module only how they are written. Pages are
self-contained: the style is inline, figures are PNG files beside the page.

Must not import matplotlib, `stream/` or `segstream/`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
p.explain { color: #555; }
"""


def escape(value: Any) -> str:
    """Text of `value`, safe inside an element or a quoted attribute.

    >>> escape("<b> & 'x'")
    '&lt;b&gt; &amp; &#x27;x&#x27;'
    """
    return html.escape(str(value))


def number(value: Any, digits: int = 3) -> str:
    """A table cell's text: floats with `digits` decimals, anything else as is.

    >>> number(0.12345), number(0.5, 1), number(7), number(None)
    ('0.123', '0.5', '7', 'None')
    """
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(
    header: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    row_classes: Sequence[str | None] | None = None,
) -> str:
    """A table; every header and cell is escaped. `row_classes` gives each body row a CSS
    class (None: none).

    >>> table(["a", "b"], [[1, "<x>"]])
    '<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td>&lt;x&gt;</td></tr></tbody></table>'
    """
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr{_class(row_classes, i)}>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _class(classes: Sequence[str | None] | None, i: int) -> str:
    name = classes[i] if classes else None
    return f" class={name}" if name else ""


def image(src: str, alt: str) -> str:
    """A figure stored beside the page (`src` is a file name in the same folder).

    >>> image("k_selection.png", "elbow and silhouette")
    "<img src='k_selection.png' alt='elbow and silhouette'>"
    """
    return f"<img src='{escape(src)}' alt='{escape(alt)}'>"


def page(title: str, parts: Iterable[str], style: str = "") -> str:
    """A complete page: `parts` (HTML, already escaped) one per line in the body, the
    shared style plus `style`.

    >>> page("t", ["<p>x</p>"]).endswith("<body><p>x</p></body></html>\\n")
    True
    """
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{STYLE}{style}</style>"
        "</head><body>" + "\n".join(parts) + "</body></html>\n"
    )
