"""Where the published reference logs live: the steering repository's ``shared/reference`` beside the checkout
(CI lays a copy of shared/ next to the clone). They are kept out of the project's own tree (their repository
carries no licence), so the tests read them in place; ``RSCERT_REFERENCE_DIR`` points elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RSCERT_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
COHEN2019 = REFERENCE / "cohen2019"
assert (COHEN2019 / "README.md").is_file(), (
    f"the published reference logs are not at {COHEN2019}: put shared/reference beside the checkout "
    "or set RSCERT_REFERENCE_DIR")
