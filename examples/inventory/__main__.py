"""``python -m examples.inventory [--redis URL]``: run the inventory demo (from the
repository root)."""

from .demo import main

if __name__ == "__main__":
    raise SystemExit(main())
