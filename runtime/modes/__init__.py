"""Decoding modes, one module each, all built on Session's primitives."""

from __future__ import annotations

MODES = ("ar", "bltd", "blts", "bltdv")
