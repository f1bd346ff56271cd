"""Fixtures of the documentation tests: the shared tiny model as a checkpoint directory, and the shared tiny bundle
(tests/conftest.py) with the precision the README's API example loads, built once per session."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def doc_checkpoint(tiny_bltd, tmp_path_factory):
    from fastblt.graphs import save_model

    return save_model(tiny_bltd, tmp_path_factory.mktemp("doc") / "ckpt")


@pytest.fixture(scope="session")
def doc_bundle(tiny_bundle, tmp_path_factory):
    """`tiny_bundle` plus int8-dynamic (no calibration: a copy and one quantize stage, not a second build)."""
    from fastblt.export.bundle import quantize_bundle

    out = tmp_path_factory.mktemp("doc") / "bundle"
    shutil.copytree(tiny_bundle, out)
    return quantize_bundle(out, ("int8-dynamic",), log=lambda m: None)
