"""Decoding modes, one module each, all built on Session's primitives, registered here once.

Each mode module defines `run(session, sampler, budget, counters, **options)`, `prepare(config, options)`
(checks the options that concern it and fills its defaults, e.g. BLT-D's block start) and `slack(options)`
(the KV slack its rollbacks and re-read rows need). The Generator, the CLI, the demo and the server read
`REGISTRY` / `MODES`; adding a mode touches its module and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str  # what users type
    title: str  # what tables show
    module: str  # fastblt.runtime.modes.<module>

    def load(self):
        return importlib.import_module(f"fastblt.runtime.modes.{self.module}")


REGISTRY = {m.name: m for m in (Mode("ar", "AR", "ar"), Mode("bltd", "BLT-D", "diffusion"),
                                Mode("blts", "BLT-S", "selfspec"), Mode("bltdv", "BLT-DV", "diffusion_verify"))}
MODES = tuple(REGISTRY)
