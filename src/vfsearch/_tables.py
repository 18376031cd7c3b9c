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
    for cols, dtype in ((ints, "int64"), (floats, "float64"), (strings, "string"),
                        (categories, "category")):
        for c in cols:
            if c in df:
                df[c] = df[c].astype(dtype)
    return df
