"""``python -m pipelines.run_times``: the entry point ``make demo`` uses.

The tool is ``pipelines.cli.run_times``.
"""

from pipelines.cli.run_times import main

if __name__ == "__main__":
    raise SystemExit(main())
