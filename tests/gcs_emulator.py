"""Runs gcp-storage-emulator (the GCS test server) with the one response header it lacks.

Real GCS sends an object's generation with its bytes (`x-goog-generation`); the emulator's
media download does not. tensorstore, which orbax writes arrays with, reads a generation
there before each conditional update of a checkpoint's OCDBT manifest and fails with
"Malformed StorageGeneration" without it. This adds the header (and
`x-goog-metageneration`) to the emulator's download answer, then starts it as its CLI
does: `python tests/gcs_emulator.py start --host H --port P --in-memory`.
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # Not found: the emulator's own handler answers 404.
    obj = None
  if obj is not None:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", 1))
  return _download(request, response, storage, *args, **kwargs)


objects.download = download  # Before server.py builds its routes from objects.download.

if __name__ == "__main__":
  from gcp_storage_emulator.__main__ import main
  sys.exit(main(sys.argv[1:]))
