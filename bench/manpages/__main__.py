"""``python -m bench.manpages [--out DIR] [--install]``: build the man-page BEIR set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._build import DEFAULT_OUT, PACKAGES, build, install


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--install", action="store_true",
                        help=f"apt-get install {' '.join(PACKAGES)} first (needs root)")
    args = parser.parse_args()
    if args.install:
        install()
    print(json.dumps(build(args.out)))


if __name__ == "__main__":
    main()
