"""The demo through its HTTP API (gradio_client), as another program would use it: `/generate` returns what
`blt-run generate` prints, 8 simultaneous calls return what they return one at a time, and every bad input
gets one clear message while the next request still works."""

from __future__ import annotations

import httpx
import pytest

from fastblt.demo.race import LABELS

PROMPTS = ["def add(a, b):\n", "class Point:\n    def __init__(self", "import os\n", "for i in range(10):",
           "x = [1, 2,", "# read a file\n", "while True:\n    ", "return {'a': 1,"]
RACE_DEFAULTS = dict(max_new_bytes=48, block_size=8, draft_k=4, rule="mode default", alpha=0.7, gamma=1.0,
                     temperature=0.0, top_p=1.0, seed=0, stop="", schedule="side by side")


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def _race(client, prompt, modes, **kw):
    a = {**RACE_DEFAULTS, **kw}
    return client.predict(prompt, list(modes), a["max_new_bytes"], a["block_size"], a["draft_k"], a["rule"],
                          a["alpha"], a["gamma"], a["temperature"], a["top_p"], a["seed"], a["stop"], a["schedule"],
                          api_name="/race")


@pytest.mark.parametrize("mode", list(LABELS))
def test_generate_endpoint_returns_what_blt_run_prints(client, blt_run, mode):
    text = client.predict(PROMPTS[1], mode, 64, api_name="/generate")
    assert text == blt_run(PROMPTS[1], mode, 64)
    assert text


def test_eight_simultaneous_calls_equal_one_at_a_time(client, demo_gen):
    calls = [(p, list(LABELS)[i % 4], 40 + 8 * i) for i, p in enumerate(PROMPTS)]
    alone = [client.predict(*c, api_name="/generate") for c in calls]
    assert len(set(alone)) == len(calls)
    jobs = [client.submit(*c, api_name="/generate") for c in calls]  # all queued at once
    assert [j.result(timeout=600) for j in jobs] == alone
    assert client.predict(*calls[3], api_name="/generate") == alone[3]  # and it keeps serving


def test_race_endpoint_streams_every_mode_to_a_finished_panel(client, demo_gen):
    out = _race(client, PROMPTS[0], LABELS, max_new_bytes=40)
    panels, summary = out[:4], out[4]
    for mode, html in zip(LABELS, panels, strict=True):
        assert f'data-mode="{mode}" data-state="done"' in html, html[:300]
    ar = demo_gen.generate(PROMPTS[0], mode="ar", max_new_bytes=40).text
    for mode in ("ar", "blts", "bltdv"):  # greedy verification is lossless
        row = summary.split(f"<td>{LABELS[mode]}</td>")[1].split("</tr>")[0]
        assert row.endswith("<td>yes</td>"), row
    assert ar.replace("&", "&amp;").replace("<", "&lt;")[:10] in panels[0]


CAP = 256  # the test server's cap (conftest)
BAD = [
    (("", "ar", 16), "the prompt is empty"),
    (("abc\x00def", "ar", 16), "NUL character"),
    (("abc", "ar", CAP + 1), f"1 to {CAP} bytes"),
    (("abc", "ar", 0), f"1 to {CAP} bytes"),
    (("abc", "fast", 16), "unknown modes ['fast']"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_gets_one_clear_message_then_the_next_request_works(client, demo_cap, args, message):
    from gradio_client.exceptions import AppError

    assert demo_cap == CAP
    with pytest.raises(AppError) as err:
        client.predict(*args, api_name="/generate")
    assert message in str(err.value) and "Traceback" not in str(err.value)
    assert client.predict("def f(x):", "ar", 8, api_name="/generate")


def test_block_size_the_bundle_lacks_and_no_mode(client, demo_gen):
    from gradio_client.exceptions import AppError

    missing = max(demo_gen.config.block_sizes) + 3
    with pytest.raises(AppError, match=f"block size {missing} is not one this model has"):
        _race(client, "abc", ["bltd"], block_size=missing)
    with pytest.raises(AppError, match="no decoding mode is ticked"):
        _race(client, "abc", [])
    assert 'data-state="done"' in _race(client, "abc", ["bltd"], max_new_bytes=8)[1]


def test_lone_surrogate_over_raw_http(demo_url, client):
    """A lone surrogate cannot even be encoded by gradio_client; JSON carries it as an escape."""
    body = '{"data": ["abc\\ud800def", "ar", 16]}'
    with httpx.Client(base_url=demo_url, timeout=120) as http:
        r = http.post("gradio_api/call/generate", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        stream = http.get(f"gradio_api/call/generate/{r.json()['event_id']}").text
    assert "event: error" in stream and "lone surrogate U+D800" in stream, stream
    assert "Traceback" not in stream
    assert client.predict("def f(x):", "ar", 8, api_name="/generate")
