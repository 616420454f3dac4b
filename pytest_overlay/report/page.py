"""One HTML page from the Markdown the reports write: headings, GitHub tables, lists and
paragraphs, each as a reader of the page expects them (a list as a list, a table as a table)."""

from __future__ import annotations

import html

STYLE = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px}th{background:#eee}img{max-width:100%}")


def table(lines: list[str]) -> str:
    """A GitHub table's lines (the header first; the rule line is skipped) as <table>."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines
            if line.startswith("|") and not set(line) <= set("|-: ")]
    return "<table>" + "".join("<tr>" + "".join(
        f"<t{'h' if i == 0 else 'd'}>{html.escape(c)}</t{'h' if i == 0 else 'd'}>" for c in row) + "</tr>"
        for i, row in enumerate(rows)) + "</table>"


def markdown(text: str) -> list[str]:
    """Blocks separated by blank lines: `#` headings, tables, `- ` lists (a list may follow a
    line of text in its block), and paragraphs."""
    body = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines:
            continue
        if lines[0].startswith("#"):
            level = len(lines[0]) - len(lines[0].lstrip("#"))
            body.append(f"<h{level}>{html.escape(lines[0].lstrip('# '))}</h{level}>")
            lines = lines[1:]
        text_lines = [line for line in lines if not line.startswith(("|", "- "))]
        if text_lines:
            body.append(f"<p>{html.escape(' '.join(text_lines))}</p>")
        items = [line[2:] for line in lines if line.startswith("- ")]
        if items:
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>")
        rows = [line for line in lines if line.startswith("|")]
        if rows:
            body.append(table(rows))
    return body


def page(title: str, body: list[str], style: str = STYLE) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
