#!/usr/bin/env python3
"""Entrypoint of a toolkit algorithm image (Grand Challenge): one case, /input -> /output.

Copied into the build context by `toolkit export-container`; the logic lives in
`toolkit.container.entrypoint`, installed in the image with the toolkit wheel. Outside a
container: `python entrypoint.py --input IN --output OUT --model MODEL --algorithm algorithm.json`.
"""

import sys

from toolkit.container.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
