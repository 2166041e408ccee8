"""Where the Hydra configs live: ``CONF_DIR``, absolute (any cwd).

A checkout (told by its pyproject.toml, so a stray conf/ in site-packages is never ours) uses the repository's conf/;
a wheel install the copy shipped inside it as goracs/conf/.
"""

from __future__ import annotations

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]
_IN_CHECKOUT = (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "conf" / "config.yaml").is_file()
CONF_DIR = str(_CHECKOUT / "conf" if _IN_CHECKOUT else Path(__file__).resolve().parent / "conf")
