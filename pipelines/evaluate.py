"""``python -m pipelines.evaluate``: the entry point the Makefile and README use.

The tool is ``pipelines.cli.evaluate`` (also ``chexmix evaluate``).
"""

from pipelines.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
