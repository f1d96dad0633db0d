"""Reading a CSV table whose header must name certain columns, with line numbers for error messages."""
import csv


def csv_rows(path, columns):
    """(line number, row dict) of each data row of the CSV file `path` (line 1 is the header, which must hold
    every one of `columns`; a ValueError naming the file and the missing ones otherwise)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; it has {reader.fieldnames}")
        yield from enumerate(reader, start=2)
