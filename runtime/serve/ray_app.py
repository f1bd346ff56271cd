"""The same app on Ray Serve: a deployment whose replicas each load the model once and serve `create_app` over it.

    serve run docs/serve-ray.yaml          # the config names build_app below (docs/serving.md)

Ray routes each HTTP request to a replica and autoscales replicas on ongoing requests; inside a replica the
WorkerPool bounds generation exactly as under `blt-run serve`.
"""

from __future__ import annotations

import dataclasses

from fastblt.runtime.serve import RAY_HINT
from fastblt.runtime.serve.app import ServeConfig, create_app
from fastblt.runtime.serve.server import ModelSource

try:
    from ray import serve
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(RAY_HINT) from None

SOURCE_ARGS = tuple(f.name for f in dataclasses.fields(ModelSource))
CONFIG_ARGS = tuple(f.name for f in dataclasses.fields(ServeConfig))


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress()
class FastBLT:
    def __init__(self, source: ModelSource, config: ServeConfig) -> None:
        self.generator = source.load()
        self.config = config

    def __serve_build_asgi_app__(self):
        """Ray calls this once per replica, after __init__: the app over this replica's loaded model."""
        return create_app(self.generator, self.config)


def parse_args(args: dict) -> tuple[ModelSource, ServeConfig]:
    """The config file's `args` (the fields of ModelSource and ServeConfig), checked before any replica starts."""
    unknown = sorted(set(args) - set(SOURCE_ARGS) - set(CONFIG_ARGS))
    if unknown:
        raise ValueError(f"unknown fastblt app args {unknown}; valid args are {list(SOURCE_ARGS + CONFIG_ARGS)}")
    source = ModelSource(**{k: args[k] for k in SOURCE_ARGS if k in args})
    config = {k: args[k] for k in CONFIG_ARGS if k in args}
    config.setdefault("model", source.model_id)
    return source, ServeConfig(**config)


def deployment(args: dict, **options):
    """A bound application; `options` are Ray deployment options (num_replicas, autoscaling_config, ...). By
    default a replica takes workers + max_queue requests at once, so Ray's router holds the rest."""
    source, config = parse_args(args)
    options.setdefault("max_ongoing_requests", config.workers + config.max_queue)
    return FastBLT.options(**options).bind(source, config)


def build_app(args: dict):
    """The `import_path` target of a Serve config file (deployment options come from its `deployments:`)."""
    return deployment(args)
