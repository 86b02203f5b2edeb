"""A user's table as a pandas DataFrame for formulas: columns of numbers are float, columns of labels are strings.

Read through ``tables.read_table``, the one reader of users' tables (CSV/TSV/TXT and ``.npy``/``.npz``), so its
messages and checks are the same as for the explicit column keys. A column whose non-missing cells all parse as
numbers is float64 (missing cells NaN); any other column holds strings (missing cells None). Missing cells are the
empty cell and R's ``NA`` (and ``NaN``/``nan``); a model drops the rows whose used columns miss a value
(``formula.build_design``), as lme4's ``na.omit`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .tables import DataFileError, read_table

MISSING = frozenset({"", "NA", "NaN", "nan", "NAN"})


def read_frame(
    path: str | Path,
    header: bool | None = True,
    key: str = "data.path",
    fmt: str = "auto",
    array: str | None = None,
) -> pd.DataFrame:
    """Reads a table into a DataFrame with one column per table column.

    Args:
        path: a .csv/.tsv/.txt table or a .npy/.npz array file.
        header: the first CSV/TSV row names the columns (True), does not (False) or is detected (None). Without
            names (no header, or an array file) the columns are named ``V1``, ``V2``, ... as R's read.table does.
        key: the config key that named the file, for messages.
        fmt: one of ``tables.FORMATS``; ``auto`` goes by the extension.
        array: the array of an .npz archive; None takes the only one.

    Returns:
        The frame, rows in file order (index 0..n-1). ``frame.attrs["lines"]`` holds each row's line number in a
        text file (None for array files), for messages.

    Raises:
        DataFileError: the file cannot be read, or two columns share a name.
    """
    table = read_table(path, fmt=fmt, header=header, array=array, key=key)
    width = table.values.shape[1]
    names = list(table.names) if table.names is not None else [f"V{j + 1}" for j in range(width)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataFileError(
                f"{key}: {table.path} has two columns named '{name}'; give every column its own name in the header"
            )
        seen.add(name)
    columns = {}
    for j, name in enumerate(names):
        if table.cells is None:
            columns[name] = table.values[:, j].copy()
            continue
        cells = table.cells[:, j]
        missing = np.isin(cells, list(MISSING))
        numeric = ~table.unparsed[:, j] | missing
        if numeric.all():
            values = table.values[:, j].copy()
            values[missing] = np.nan
            columns[name] = values
        else:
            columns[name] = np.array([None if gone else str(cell) for cell, gone in zip(cells, missing)], dtype=object)
    frame = pd.DataFrame(columns, index=pd.RangeIndex(table.values.shape[0]))
    frame.attrs["lines"] = [int(line) for line in table.rows] if table.is_text else None
    return frame
