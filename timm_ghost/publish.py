"""Commands of the timm-ghost command line (being written)."""
from __future__ import annotations

from typing import Any


def register_cli(sub: Any) -> None:
    """Add this module's sub-commands (none yet)."""
