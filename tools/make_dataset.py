"""Convert an image folder + captions file, or webdataset tars, into bigvl shards.

  python tools/make_dataset.py --out /data/cc3m --split train --webdataset '/raw/cc3m/*.tar'
  python tools/make_dataset.py --out /data/pets --split test \
      --images /raw/pets/images --captions /raw/pets/test.jsonl

See bigvl/data/make_dataset.py and docs/data.md.
"""

import os
import sys

# Runs from a checkout without installing bigvl.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bigvl.data import make_dataset  # noqa: E402

if __name__ == "__main__":
  sys.exit(make_dataset.main(sys.argv[1:]))
