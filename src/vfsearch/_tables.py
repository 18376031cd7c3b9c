"""pandas DataFrames of results and caches; pandas is an optional dependency, imported only
here (``pip install vfsearch[pandas]``)."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import BackendUnavailable


def frame(data, *, ints: Sequence[str] = (), floats: Sequence[str] = (),
          strings: Sequence[str] = (), categories: Sequence[str] = ()):
    """A DataFrame from rows (list of dicts) or columns (dict of arrays) with stable dtypes
    (int64, float64, pandas strings, categories), also when there are no rows."""
    try:
        import pandas as pd
    except ImportError:
        raise BackendUnavailable("DataFrames need pandas: pip install 'vfsearch[pandas]'") from None
    df = pd.DataFrame(data) if not isinstance(data, list) or data else \
        pd.DataFrame(columns=[*ints, *floats, *strings, *categories])
    for c in ints:
        if c in df:
            df[c] = df[c].astype("int64")
    for c in floats:
        if c in df:
            df[c] = df[c].astype("float64")
    for c in strings:
        if c in df:
            df[c] = df[c].astype("string")
    for c in categories:
        if c in df:
            df[c] = df[c].astype("category")
    return df
