"""One way to write a workbook: titled sheets, a bold frozen header, readable widths."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["workbook"]


def _cell(value: Any) -> Any:
    # Text people typed may hold control characters a worksheet cannot store.
    if isinstance(value, str):
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        return ILLEGAL_CHARACTERS_RE.sub("\ufffd", value)
    return value


def workbook(sheets: Iterable[tuple[str, Sequence[str], Iterable[Sequence[Any]]]]) -> bytes:
    """An XLSX file with one sheet per ``(title, header, rows)``."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font

    book = Workbook()
    book.remove(book.active)
    for title, head, rows in sheets:
        sheet = book.create_sheet(title[:31])
        sheet.append(list(head))
        for row in rows:
            sheet.append([_cell(v) for v in row])
        for cell in sheet[1]:
            cell.font = Font(bold=True)
            cell.alignment = Alignment(horizontal="center")
        sheet.freeze_panes = "A2"
        for column in sheet.columns:
            width = max((len(str(c.value or "")) for c in column), default=4)
            sheet.column_dimensions[column[0].column_letter].width = min(max(width * 1.5, 6), 60)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
