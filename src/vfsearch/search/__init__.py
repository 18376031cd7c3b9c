"""Region search: the scan kernel and its helpers."""
