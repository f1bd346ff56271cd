"""The race without a server: each byte's origin agrees with the runtime's counters, the coloured segments
join to exactly the generated text, the replay's blocks cover their masked rows once, the patcher view
follows the patching rule, and bad requests get one clear message."""

from __future__ import annotations

import pytest

from fastblt.demo.race import BadInput, Request, check_request, patcher_view, race

PROMPT = "class Stack:\n    def __init__(self"


@pytest.fixture(scope="module")
def gen(demo_gen):
    return demo_gen


@pytest.fixture(scope="module")
def tracks(gen):
    req = Request(PROMPT, max_new_bytes=80, block_size=8, draft_k=4, schedule="one after another")
    return list(race(gen, req, cap=256))[-1]  # the same {mode: Track} after every batch, finished at the end


def test_origins_agree_with_the_counters(tracks):
    for mode, t in tracks.items():
        r = t.result
        assert r is not None and t.error is None, (mode, t.error)
        assert bytes(t.data) == r.bytes and len(t.origins) == len(r.bytes)
        assert "".join(text for text, _ in t.segments()) == r.text
        kinds = [k for k, _ in t.origins]
        c = r.counters
        if mode == "ar":
            assert set(kinds) == {"ar"}
        if mode in ("blts", "bltdv"):
            assert kinds[0] == "ar" and kinds.count("ar") == 1
            assert kinds.count("fix") == c["iterations"] - 1  # every commit opens with its exact byte
            assert kinds.count("draft") <= c["bytes_accepted"] and t.accepted == c["bytes_accepted"]
        if mode in ("bltd", "bltdv"):
            assert t.steps_per_block() == c["steps_per_block"]
            spb = c["steps_per_block"]
            made = [s for k, s in t.origins if k == ("diffusion" if mode == "bltd" else "draft")]
            assert all(1 <= s <= max(spb) for s in made)
        if mode == "bltd":
            assert set(kinds) == {"diffusion"}
    assert tracks["blts"].data == tracks["ar"].data == tracks["bltdv"].data  # greedy verification is lossless


def test_replay_blocks_fill_each_masked_row_once(tracks):
    for mode in ("bltd", "bltdv"):
        blocks = tracks[mode].blocks
        assert blocks
        for b in blocks:
            rows = [p for s in b.steps for p in s["positions"]]
            first = b.known + (mode == "bltdv")
            assert sorted(rows) == list(range(first, b.size))
            assert [s["step"] for s in b.steps] == list(range(1, len(b.steps) + 1))
            assert all(0.0 < c <= 1.0 for s in b.steps for c in s["confidences"])
            assert mode == "bltd" or (b.exact is not None and b.accepted is not None)


def test_patcher_view_follows_the_patching_rule(gen, tracks):
    data = PROMPT.encode() + bytes(tracks["ar"].data)
    view = patcher_view(gen, data)
    ent, starts, theta, cap = view["entropies"], view["starts"], view["threshold"], view["max_patch_length"]
    assert len(ent) == len(data) and len(starts) > 2
    expected, last = [0], 0
    for i in range(1, len(data)):
        if ent[i] > theta or (cap is not None and i - last >= cap):
            expected.append(i)
            last = i
    assert starts == expected


@pytest.mark.parametrize("change, message", [
    (dict(prompt=""), "the prompt is empty"),
    (dict(prompt="a\ud83db"), "lone surrogate U+D83D"),
    (dict(prompt="a\x00"), "NUL character"),
    (dict(max_new_bytes=257), "1 to 256 bytes"),
    (dict(max_new_bytes=True), "1 to 256 bytes"),
    (dict(modes=()), "no decoding mode is ticked"),
    (dict(block_size=5), "block size 5 is not one this model has: choose one of ["),
    (dict(draft_k=0), "draft k = 0"),
    (dict(temperature=-1.0), "temperature=-1.0 must be in [0, 100]"),
    (dict(top_p=0.0), "top_p=0.0 must be in (0, 1]"),
    (dict(rule="confidence α", alpha=2.0), "alpha=2.0 must be in (0, 1]"),
    (dict(seed=1.5), "seed = 1.5"),
])
def test_bad_requests(gen, change, message):
    req = Request(**{"prompt": "abc", **change})
    with pytest.raises(BadInput) as err:
        check_request(gen, req, cap=256)
    assert message in str(err.value)
