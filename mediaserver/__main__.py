"""``python -m mediaserver``: the same as the ``mediaserver`` console script."""

from mediaserver.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
