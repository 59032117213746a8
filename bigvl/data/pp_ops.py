"""PP_OPS' list of the modules that define pp ops: importing this module registers them all.

Each registers its ops with `@PP_OPS.register("name")` (from bigvl.registry); a module that
adds ops adds its line here.
"""

from bigvl.data import interleaved  # noqa: F401  (each_image, interleave_text)
from bigvl.data import transforms  # noqa: F401  (resize, random_crop, ..., tokenize, keep)
