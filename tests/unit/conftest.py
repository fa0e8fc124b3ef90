"""Filter plugins live in plugins/filter/ (the roles call them as chatstack.stack.<filter>); import them as modules."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "filter"))
