"""``python -m vfsearch.cli``."""

from . import main

main()
