"""``python -m asaga``: the command line of :mod:`asaga._cli`."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
