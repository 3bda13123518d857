"""``python -m attnkern.bench``: the benchmark table (:mod:`attnkern.bench.runner`)."""

from .runner import main

if __name__ == "__main__":
    main()
