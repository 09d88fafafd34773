"""``python -m srum_ray.train --config FILE [key=value ...]``: the job entrypoint.

The same as ``srum-ray run``; this form is what ``ray job submit -- python -m srum_ray.train``
runs on a cluster.
"""

import sys

from srum_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
