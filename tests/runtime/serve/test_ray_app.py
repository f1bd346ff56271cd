"""The same app on a real local Ray cluster (loopback only): the documented config validates, two replicas each load
the model, and a streaming request through Ray's HTTP proxy returns what `blt-run generate` returns."""

from __future__ import annotations

import pathlib

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
yaml = pytest.importorskip("yaml")

CONFIG = pathlib.Path(__file__).resolve().parents[3] / "docs" / "serve-ray.yaml"


def test_documented_config_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    from fastblt.runtime.serve import ray_app

    schema = ServeDeploySchema(**yaml.safe_load(CONFIG.read_text()))
    (app,) = schema.applications
    assert app.import_path == "fastblt.runtime.serve.ray_app:build_app"
    source, config = ray_app.parse_args(app.args)
    assert (source.bundle, source.backend, config.model) == ("/models/fastblt-bundle", "ort", "fastblt")
    (dep,) = app.deployments
    assert dep.name == ray_app.FastBLT.name and dep.max_ongoing_requests == config.workers + config.max_queue
    assert 1 <= dep.autoscaling_config["min_replicas"] < dep.autoscaling_config["max_replicas"]
    with pytest.raises(ValueError, match=r"unknown fastblt app args \['bundel'\]"):
        ray_app.parse_args({"bundel": "/x"})


def test_two_replicas_stream_through_ray_proxy(tiny_checkpoint, serve_tools):
    import fastblt.runtime as rt
    from fastblt.runtime.serve import ray_app

    expected = rt.load(tiny_checkpoint, threads=1).generate("def f(x):", mode="blts", draft_k=4, max_new_bytes=24)
    port = serve_tools.free_port()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = {**yaml.safe_load(CONFIG.read_text())["applications"][0]["args"], "bundle": None,
                "backend": "torch", "checkpoint": str(tiny_checkpoint), "model": "tiny-blt"}
        app = ray_app.deployment(args, num_replicas=2, ray_actor_options={"num_cpus": 0.5})
        serve.run(app, name="fastblt", route_prefix="/")
        status = serve.status().applications["fastblt"].deployments["FastBLT"]
        assert status.replica_states == {"RUNNING": 2}
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        chunks = list(client.completions.create(model="tiny-blt", prompt="def f(x):", max_tokens=24, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"mode": "blts", "draft_k": 4}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
        assert chunks[-1].usage.completion_tokens == len(expected.bytes)
        final = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
        assert final.model_extra["fastblt"]["n_dec"] == expected.counters["n_dec"]
    finally:
        serve.shutdown()
        ray.shutdown()
