"""One reader per file format, shared by the catalog's official files (`transferkit.tasks.loading`) and custom
tasks' own files (`transferkit.tasks.custom`). Every row comes with where it is (`path:line`), and every problem
is a one-line `DataError` naming the file and line. `official` names the upstream format of a catalog file
("GLUE"), whose messages say what the official layout is; None is a user's own file.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from transferkit.errors import DataError
from transferkit.tasks.labels import shown

Located = tuple[str, dict]  # (where: "path:line", the row's fields)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def decode(data: bytes, path: Path, hint: str = "save the file as UTF-8") -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text (byte {exc.start}); {hint}") from None


def read_text(path: Path, hint: str = "save the file as UTF-8") -> str:
    return decode(read_bytes(path), path, hint)


def delimited_rows(
    text: str, path: Path, fmt: str, columns: tuple[str, ...] | None, needed: list[str] | tuple[str, ...], *,
    official: str | None = None, skipped: list[int] | None = None,
) -> Iterator[Located]:
    """Rows of a csv or tsv file with a header line (or the given `columns`) holding the `needed` columns.

    With `skipped` (a one-item counter), rows with the wrong number of fields are counted there and left out
    (only where upstream is known to hold broken rows); otherwise they are an error.
    """
    tsv = fmt == "tsv"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    try:
        header = list(columns) if columns else next(reader, None)
        if header is None:
            expected = f"a {official} .tsv with a header line" if official else "a header line naming the columns"
            raise DataError(f"{path}: the file is empty; expected {expected}")
        missing = [column for column in needed if column not in header]
        if missing:
            if official:
                raise DataError(f"{path}: header has no column {missing[0]!r} (found: {shown(', '.join(header), 120)}); "
                                f"expected the official {official} format")
            where = f"{path}" if columns else f"{path}:1"
            raise DataError(f"{where}: no column {missing[0]!r} (columns: {', '.join(header)})")
        while True:
            start = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                return
            if not record:
                continue
            if len(record) != len(header):
                if skipped is not None:
                    skipped[0] += 1
                    continue
                if official:
                    raise DataError(f"{path}:{start}: expected {len(header)} tab-separated fields, found {len(record)}; "
                                    f"the file is not in the official {official} format")
                raise DataError(f"{path}:{start}: {len(record)} fields, but the header names {len(header)} columns")
            yield f"{path}:{start}", dict(zip(header, record))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: unreadable {'.tsv ' if official else ''}row ({exc})") from None


def jsonl_rows(text: str, path: Path, expected: str = "one JSON object per line") -> Iterator[Located]:
    """The JSON objects of a .jsonl file, one a line (blank lines skipped)."""
    for number, line in enumerate(io.StringIO(text, newline=None), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); expected {expected}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
        yield f"{path}:{number}", record


def parquet_rows(data: bytes, path: Path, needed: list[str]) -> Iterator[Located]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(io.BytesIO(data))
        names = source.schema_arrow.names
        missing = [column for column in needed if column not in names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
        table = source.read(columns=list(dict.fromkeys(needed)))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
    for number, record in enumerate(table.to_pylist(), start=1):
        yield f"{path} row {number}", record


def lines_rows(text: str, path: Path, field: str) -> Iterator[Located]:
    """One example text a line (blank lines skipped), under `field`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield f"{path}:{number}", {field: line.strip()}
