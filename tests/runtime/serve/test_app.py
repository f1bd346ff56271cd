"""`blt-run serve` against the official openai client: the same text as `blt-run generate`, streamed or not and
under concurrency; OpenAI-style 4xx errors while the server keeps serving; 429 beyond --max-queue; a client that
leaves frees its worker; Prometheus metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from fastblt.runtime.cli import main as run_main

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

CAP = 512
# (request fields, the same settings as `blt-run generate` options)
CASES = [
    ({"prompt": "def f(x):"}, []),
    ({"prompt": "Grüße aus Köln", "mode": "blts", "draft_k": 4}, ["--mode", "blts", "--draft-k", "4"]),
    ({"prompt": "class A:", "mode": "bltd", "block_size": 4, "alpha": 0.5},
     ["--mode", "bltd", "--block-size", "4", "--alpha", "0.5"]),
    ({"prompt": "東京", "mode": "bltd", "block_size": 8, "unmask": "entropy", "gamma": 1.0},
     ["--mode", "bltd", "--block-size", "8", "--gamma", "1.0"]),
    ({"prompt": "", "mode": "bltdv", "block_size": 4}, ["--mode", "bltdv", "--block-size", "4"]),
    ({"prompt": "if x:", "mode": "bltd", "block_size": 4, "block_start": "forced"},
     ["--mode", "bltd", "--block-size", "4", "--block-start", "forced"]),
    ({"prompt": "import os", "temperature": 0.9, "top_p": 0.95, "seed": 7},
     ["--temperature", "0.9", "--top-p", "0.95", "--seed", "7"]),
]


def blt_run_generate(checkpoint, prompt: str, max_tokens: int, options: list[str]) -> dict:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server runs (--threads 1): tiny graphs only lose to thread handoffs
    try:
        res = CliRunner().invoke(run_main, ["generate", "--checkpoint", str(checkpoint), "--json",
                                            "--max-new-bytes", str(max_tokens), *options, prompt])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory, serve_tools):
    """The README's command: `blt-run serve` in its own process."""
    port = serve_tools.free_port()
    log = open(tmp_path_factory.mktemp("serve-log") / "server.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "fastblt.runtime.cli", "serve", "--checkpoint", str(tiny_checkpoint),
                             "--threads", "1", "--port", str(port), "--workers", "2", "--max-queue", "6",
                             "--max-new-bytes-cap", str(CAP)], stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        serve_tools.wait_healthy(url, 180, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def client(url: str, timeout: float = 120.0):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def create(url: str, fields: dict, **kw):
    fields = dict(fields)
    std = {k: fields.pop(k) for k in ("prompt", "temperature", "top_p", "seed", "stop", "echo") if k in fields}
    return client(url).completions.create(model="tiny-blt", max_tokens=kw.pop("max_tokens", 24), extra_body=fields,
                                          **std, **kw)


def streamed(url: str, fields: dict, **kw) -> tuple[str, list]:
    chunks = list(create(url, fields, stream=True, **kw))
    return "".join(c.choices[0].text for c in chunks if c.choices), chunks


def metric(url: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_same_text_as_blt_run_generate_streamed_or_not_and_concurrently(server, tiny_checkpoint):
    refs = [blt_run_generate(tiny_checkpoint, f["prompt"], 24, opts) for f, opts in CASES]
    stop_at = next(i for i in range(3, 20) if "\ufffd" not in refs[0]["text"][i:i + 2])
    stop = refs[0]["text"][stop_at:stop_at + 2]
    stop_ref = blt_run_generate(tiny_checkpoint, CASES[0][0]["prompt"], 24, ["--stop", stop])
    assert stop_ref["text"] == refs[0]["text"][:refs[0]["text"].index(stop)] and stop_ref["stop_reason"] == "stop"
    cases = [f for f, _ in CASES] + [{**CASES[0][0], "stop": [stop, "\x00never"]}]
    expected = refs + [stop_ref]
    with ThreadPoolExecutor(4) as pool:  # 4 clients at once on 2 workers sharing one loaded model
        plain = list(pool.map(lambda f: create(server, f), cases))
        streams = list(pool.map(lambda f: streamed(server, f, stream_options={"include_usage": True}), cases))
    for fields, ref, resp, (text, chunks) in zip(cases, expected, plain, streams, strict=True):
        new = len(bytes.fromhex(ref["bytes_hex"]))
        assert resp.choices[0].text == ref["text"] == text, fields
        assert resp.choices[0].finish_reason == ("stop" if "stop" in fields else "length")
        assert resp.usage.prompt_tokens == ref["prompt_bytes"] and resp.usage.completion_tokens == new
        info = resp.model_extra["fastblt"]
        assert (info["mode"], info["n_enc"], info["n_dec"]) == (ref["mode"], ref["counters"]["n_enc"],
                                                               ref["counters"]["n_dec"])
        assert info["bandwidth_gb"] == pytest.approx(ref["counters"]["bandwidth_gb"])
        if ref["mode"] == "blts":
            assert info["acceptance"] == pytest.approx(ref["counters"]["acceptance"])
        final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert len(final) == 1 and final[0].model_extra["fastblt"]["n_dec"] == ref["counters"]["n_dec"]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == new
    echoed = create(server, {"prompt": "def f(x):", "echo": True})
    assert echoed.choices[0].text == "def f(x):" + refs[0]["text"]


BAD = [  # (request body, status, param, words the message must contain)
    ({"prompt": "x", "mode": "beam"}, 400, "mode", "valid modes are ['ar', 'bltd', 'blts', 'bltdv']"),
    ({"prompt": "x", "mode": "bltd", "block_size": 16}, 400, "block_size", "block sizes [4, 8]"),
    ({"prompt": "x", "max_tokens": CAP + 1}, 400, "max_tokens", f"[1, {CAP}]"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens", "must be an integer"),
    ({"prompt": [1, 2, 3]}, 400, "prompt", "prompt must be a string, got list"),
    ({"prompt": 7}, 400, "prompt", "got int"),
    ({"prompt": "x", "mode": "blts", "draft_k": 0}, 400, "draft_k", "draft_k=0 must be an integer in [1, 64]"),
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature", "must be a number"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p", "top_p=0.0 must be in (0, 1]"),
    ({"prompt": "x", "mode": "bltd", "block_size": 4, "unmask": "greedy"}, 400, "unmask", "valid rules are"),
    ({"prompt": "x", "mode": "bltd", "block_size": 4, "block_start": "middle"}, 400, "block_start", "valid values"),
    ({"prompt": "x", "block_sise": 4}, 400, "block_sise", "unrecognized request argument"),
    ({"prompt": "x", "n": 2}, 400, "n", "n=2 is not supported"),
    ({"prompt": "x" * 4000, "max_tokens": 200}, 400, "max_tokens", "exceed the model's context of 4095 bytes"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model", "'gpt-4' does not exist"),
]
RAW = [  # (raw body, message words)
    (b'{"model": "tiny-blt", "prompt": "\\ud800 lone"}', "prompt is not valid UTF-8: '\\ud800' at character 0"),
    (b'{"model": "tiny-blt", "prompt": "\xff\xfe"}', "request body is not valid UTF-8"),
    (b'{"model": "tiny-blt", "prompt": ', "request body is not valid JSON"),
    (b'["a list"]', "must be a JSON object, got list"),
]


def test_bad_input_gets_openai_error_and_server_keeps_serving(server):
    before = metric(server, "fastblt_requests_total", outcome="bad_request")
    for body, status, param, words in BAD:
        body = {"model": "tiny-blt", "max_tokens": 8, **body}
        r = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
        err = r.json()["error"]
        assert (r.status_code, err["param"], err["type"]) == (status, param, "invalid_request_error"), (body, err)
        assert words in err["message"], err
    for raw, words in RAW:
        r = httpx.post(f"{server}/v1/completions", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    with pytest.raises(openai.BadRequestError) as exc:  # the official client raises on the error object
        create(server, {"prompt": "x", "mode": "beam"})
    assert exc.value.param == "mode"
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="gpt-4", prompt="x", max_tokens=4)
    r = httpx.get(f"{server}/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert metric(server, "fastblt_requests_total", outcome="bad_request") - before == len(BAD) + len(RAW) + 2
    assert create(server, {"prompt": "still serving"}, max_tokens=4).usage.completion_tokens == 4


def test_models_health_metrics(server):
    models = client(server).models.list().data
    assert [m.id for m in models] == ["tiny-blt"]
    assert models[0].model_extra["fastblt"]["block_sizes"] == [4, 8]
    assert httpx.get(f"{server}/health").json() == {"status": "ok", "model": "tiny-blt", "workers": 2, "active": 0,
                                                     "queued": 0, "max_queue": 6}
    ok = metric(server, "fastblt_requests_total", mode="blts", outcome="ok")
    gen, n_dec = (metric(server, n, mode="blts") for n in ("fastblt_generated_bytes_total", "fastblt_n_dec_total"))
    resp = create(server, {"prompt": "abc", "mode": "blts", "draft_k": 3}, max_tokens=10)
    assert metric(server, "fastblt_requests_total", mode="blts", outcome="ok") == ok + 1
    assert metric(server, "fastblt_generated_bytes_total", mode="blts") == gen + 10
    assert metric(server, "fastblt_n_dec_total", mode="blts") == n_dec + resp.model_extra["fastblt"]["n_dec"]
    assert metric(server, "fastblt_decode_bytes_per_second_count", mode="blts") >= 1
    assert metric(server, "fastblt_queue_depth") == 0 and metric(server, "fastblt_workers") == 2


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_queue_full_429_and_disconnect_frees_the_worker(tiny_checkpoint, serve_tools):
    import fastblt.runtime as rt

    srv = serve_tools.ThreadServer(rt.load(tiny_checkpoint, threads=1), model="tiny-blt", workers=1, max_queue=1)
    url, health = srv.url, lambda: httpx.get(f"{srv.url}/health").json()
    long = {"model": "tiny-blt", "prompt": "x", "max_tokens": 4000, "stream": True}
    try:
        with httpx.stream("POST", f"{url}/v1/completions", json=long, timeout=60) as a:  # holds the only worker
            lines = a.iter_lines()  # kept referenced: dropping the iterator closes the connection
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["choices"][0]["text"]
            queued = {}
            b = threading.Thread(target=lambda: queued.update(r=create(url, {"prompt": "y"}, max_tokens=8)))
            b.start()
            _wait(lambda: health()["queued"] == 1)
            with pytest.raises(openai.RateLimitError) as exc:
                create(url, {"prompt": "z"}, max_tokens=8)
            err = exc.value.body
            assert exc.value.status_code == 429 and err["code"] == "queue_full" and err["type"] == "rate_limit_error"
            assert "1 of 1 workers generating and 1 requests waiting" in err["message"]
            assert "--max-queue 1" in err["message"]
            assert exc.value.response.headers["retry-after"] == "1"
        # the streaming client left: its generation stops, the queued request runs on the freed worker
        b.join(60)
        assert queued["r"].usage.completion_tokens == 8
        _wait(lambda: health()["active"] == 0 and health()["queued"] == 0)
        stream_bytes = metric(url, "fastblt_generated_bytes_total", mode="ar") - 8
        assert 0 < stream_bytes < 4000
        # a non-streaming client that times out is a disconnect too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json={**long, "stream": False}, timeout=1.5)
        _wait(lambda: metric(url, "fastblt_requests_total", outcome="disconnected") == 2 and health()["active"] == 0)
        assert metric(url, "fastblt_generated_bytes_total", mode="ar") - 8 - stream_bytes < 4000
        assert metric(url, "fastblt_requests_total", mode="ar", outcome="rejected") == 1
        assert create(url, {"prompt": "after"}, max_tokens=5).usage.completion_tokens == 5
    finally:
        srv.stop()


def test_cli_serve_errors(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    res = runner.invoke(run_main, ["serve", "--checkpoint", str(tmp_path)])
    assert res.exit_code == 1 and "missing config.json" in res.output and "Traceback" not in res.output
    res = runner.invoke(run_main, ["serve", "--checkpoint", str(tiny_checkpoint), "--workers", "0"])
    assert res.exit_code == 1 and "workers=0 must be ≥ 1" in res.output
