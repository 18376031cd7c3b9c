"""Search benchmark (same as `vfsearch bench`): ours vs the paper's method vs the memory floor.

    python benchmarks/search_bench.py --sizes 25000,50000,75000,100000 --out benchmarks/results
"""

from vfsearch.cli import main

if __name__ == "__main__":
    main(["bench", *__import__("sys").argv[1:]])
