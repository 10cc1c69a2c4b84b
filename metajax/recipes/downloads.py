"""``metajax download DATASET``: fetch data sets with checksums (online machines)."""

from __future__ import annotations

import dataclasses

from metajax.data import omniglot
from metajax.data.paths import resolve_data_dir


@dataclasses.dataclass(frozen=True)
class OmniglotDownload:
    """Download the canonical Omniglot zips (md5-checked) into ``<data-dir>/omniglot``.

    Attributes:
      data_dir: the data directory (default: ``$METAJAX_DATA_DIR`` or ``../shared/data``).
    """

    data_dir: str | None = None


def download(cfg: OmniglotDownload) -> None:
    dest = resolve_data_dir(cfg.data_dir) / "omniglot"
    path = omniglot.download_omniglot(dest)
    print(f"Omniglot is in {path}")
