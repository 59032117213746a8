"""Writing a file so that readers see the old version or the new one, never a part.

Every process of a multi-host run may write the same workdir file (each trains the same
tokenizer, for one). A fixed temporary name would be shared by those writers: one process's
rename takes the file another is still filling, and that one's rename then fails. So each
writer gets a temporary name of its own, in the target's directory (a rename across file
systems is not atomic).
"""

from __future__ import annotations

import os
import uuid


def write(path: str, data: bytes | str) -> None:
  """Writes `data` to `path` atomically; the temporary file is removed if the write fails."""
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # No other writer's name.
  try:
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
