"""Decoding modes, one module each, all built on Session's primitives."""

from __future__ import annotations

MODES = ("ar",)  # BLT-D, BLT-S and BLT-DV join as their modules land
