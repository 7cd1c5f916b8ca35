"""A module that fails while being imported."""

from __future__ import annotations

raise RuntimeError("this module is broken on purpose")
