"""The local judge (`judges.LocalJudge`): its two rules on hand-made and recorded verdicts, a missing
model offline, and a tiny GGUF end to end through llama.cpp (xllamacpp, fetched from PyPI by its
pinned hash the first time, 34 MB; the 1.1 GB judge model is never needed here)."""

import json
import math
import re
from pathlib import Path

import pytest

from dpo_core import assets, judges, tiny
from dpo_core.assets import AssetMissing

REPLIES = json.loads((Path(__file__).parent / "fixtures" / "local_judge_replies.json").read_text())["replies"]


@pytest.mark.parametrize("first, second, verdict", [
    ("A", "B", "win"),  # the candidate chosen in both positions
    ("B", "A", "loss"),  # the reference chosen in both positions
    ("A", "A", "tie"),  # always the first position: inconsistent
    ("B", "B", "tie"),  # always the second position
    (None, "B", "invalid"), ("A", None, "invalid"), (None, None, "invalid"),
])
def test_order_swap_rule(first, second, verdict):
    assert judges.order_swap_verdict(first, second) == verdict


def test_letter_logprobs_sum_the_spellings_of_a_letter_and_ignore_the_rest():
    top = [{"token": " A", "logprob": math.log(0.5)}, {"token": '"A', "logprob": math.log(0.2)},
           {"token": " B", "logprob": math.log(0.1)}, {"token": " AB", "logprob": math.log(0.1)},
           {"token": " b", "logprob": math.log(0.05)}]
    lps = judges.letter_logprobs(top)
    assert lps["A"] == pytest.approx(math.log(0.7)) and lps["B"] == pytest.approx(math.log(0.1))
    assert judges.letter_logprobs([{"token": " Summary", "logprob": -0.1}]) == {"A": -math.inf, "B": -math.inf}


def test_recorded_replies_of_the_real_judge_give_its_verdict():
    """Qwen2.5-Coder-1.5B's letter step, recorded once per order of one comparison (a summary of the
    post against an unrelated sentence): A (-0.45 against -1.02) with the summary shown first, B
    (-0.05 against -3.10) with it shown second, so a consistent win."""
    letters = {}
    for recorded in REPLIES:
        lps = judges.letter_logprobs(recorded["reply"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"])
        order = "first" if "situation" in recorded["request_tail"] else "second"  # the comparison the judge wrote
        letters[order] = max(lps, key=lps.get)
        assert lps["A"] > -5 and lps["B"] > -5  # both letters read, each a sum over its spellings
    assert letters == {"first": "A", "second": "B"}
    assert judges.order_swap_verdict(letters["first"], letters["second"]) == "win"


def test_order_swap_summary_counts_inconsistent_pairs_over_the_valid_ones():
    rows = [{"verdict": v} for v in ["win", "tie", "loss", "tie", "invalid"]]
    summary = judges.order_swap_summary(rows)
    assert (summary["n"], summary["n_inconsistent"], summary["n_invalid"]) == (4, 2, 1)
    assert summary["inconsistency"] == 0.5 and summary["stderr"] == pytest.approx(0.25)


def test_a_missing_judge_model_or_runtime_is_one_line_naming_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_CACHE_DIR", str(tmp_path))
    with pytest.raises(AssetMissing, match=re.escape("run `make judge-assets`")) as error:
        judges.make_judge("local:qwen2.5-coder-1.5b", "summarization", tmp_path / "cache")
    assert "\n" not in str(error.value)
    with pytest.raises(AssetMissing, match=re.escape("run `make judge-runtime`")):
        assets.load_xllamacpp()
    with pytest.raises(ValueError, match="unknown judge model"):
        judges.LocalJudge("summarization", "gpt5", tmp_path)


@pytest.fixture(scope="module")
def runtime():
    assets.prepare_xllamacpp()  # 34 MB from PyPI the first time, hash-checked; cached after
    return assets.load_xllamacpp()


@pytest.mark.parametrize("letter, verdict", [("A", "tie"), ("B", "tie")])
def test_a_tiny_gguf_end_to_end_through_llama_cpp(runtime, tmp_path, letter, verdict):
    """A model that answers `letter` after anything picks the same position in both orders: every
    comparison is a tie (inconsistent), read from the letters' log-probs (0 against about -32), and
    the replies are cached, so a second judge on the same cache never starts llama.cpp."""
    model = tiny.tiny_judge_gguf(tmp_path / f"always-{letter}.gguf", letter)
    judge = judges.make_judge(f"local:{model}", "summarization", tmp_path / "cache")
    rows = judge.judge_details(["post one", "post two"], ["summary 1", "summary 2"], ["other 1", "other 2"])
    assert [row["verdict"] for row in rows] == [verdict, verdict]
    assert [(row["first"], row["second"]) for row in rows] == [(letter, letter)] * 2
    first = judge.letters("post one", "summary 1", "other 1")
    assert first[letter] == pytest.approx(0.0, abs=1e-3) and first["BA".replace(letter, "")] < -20
    assert judges.order_swap_summary(rows)["inconsistency"] == 1.0
    assert judge.server().listening_address.startswith("http://127.0.0.1:")
    cached = judges.LocalJudge("summarization", str(model), tmp_path / "cache")
    assert cached.judge(["post one"], ["summary 1"], ["other 1"]) == [verdict] and cached.uncached == 0
    assert judge.uncached == 2 * 2 * 2  # two items, two orders, the comparison and the letter step each


def test_the_loopback_server_refuses_requests_without_the_judges_key(runtime, tmp_path):
    import urllib.error
    import urllib.request

    judge = judges.LocalJudge("summarization", str(tiny.tiny_judge_gguf(tmp_path / "t.gguf")), tmp_path / "cache")
    request = urllib.request.Request(judge.server().listening_address + "/v1/chat/completions",
                                     data=b'{"messages": [{"role": "user", "content": "hi"}]}',
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(request, timeout=10)


def test_a_model_file_that_no_longer_matches_its_hash_is_refused(runtime, tmp_path):
    model = tiny.tiny_judge_gguf(tmp_path / "t.gguf")
    judge = judges.LocalJudge("summarization", str(model), tmp_path / "cache")
    model.write_bytes(model.read_bytes()[:-8] + b"\1" * 8)  # changed after the judge pinned its hash (the tail was zeros)
    with pytest.raises(judges.JudgeError, match="sha256"):
        judge.judge(["post"], ["a"], ["b"])


def fake_model(requests, quote_first=False):
    """A stand-in for llama.cpp that prefers the text "GOOD" in whichever position it is shown: the
    judge's wiring (which order is which, the margin's sign, the quote retry) is then checkable."""
    def ask(request):
        requests.append(request)
        user, answer = request["messages"][0]["content"], request["messages"][1]["content"]
        if request["max_tokens"] > 1:  # the comparison sentence
            return {"choices": [{"message": {"content": "Comparison: one is better"}}]}
        if quote_first and not answer.endswith('"'):
            top = [{"token": ' "', "logprob": -0.05}, {"token": " A", "logprob": -4.0}, {"token": " B", "logprob": -4.5}]
        else:
            good_is_a = "Summary A:\nGOOD" in user
            top = [{"token": " A", "logprob": -0.1 if good_is_a else -2.5},
                   {"token": " B", "logprob": -2.5 if good_is_a else -0.1}]
        return {"choices": [{"message": {"content": answer}, "logprobs": {"content": [{"top_logprobs": top}]}}]}
    return ask


@pytest.mark.parametrize("quote_first", [False, True])
def test_the_judge_reads_both_orders_the_right_way_round(tmp_path, quote_first):
    judge = judges.LocalJudge("summarization", "tiny", tmp_path)
    requests = []
    judge.ask = fake_model(requests, quote_first)
    rows = judge.judge_details(["post", "post"], ["GOOD", "bad"], ["bad", "GOOD"])
    assert [row["verdict"] for row in rows] == ["win", "loss"]  # the candidate GOOD wins, the candidate bad loses
    assert rows[0]["logprob_margin"] == pytest.approx(2.4) and rows[1]["logprob_margin"] == pytest.approx(-2.4)
    assert (rows[0]["first"], rows[0]["second"]) == ("A", "B") and rows[0]["comparison_first"] == "one is better"
    letter_steps = [r for r in requests if r["max_tokens"] == 1]
    assert letter_steps[0]["messages"][1]["content"] == "Comparison: one is better\nPreferred:"
    if quote_first:  # the letter read after the quote, not from the leftover 2% of ' A' / ' B'
        assert len(letter_steps) == 8 and letter_steps[1]["messages"][1]["content"].endswith('Preferred: "')


def test_letter_logprobs_do_not_underflow():
    lps = judges.letter_logprobs([{"token": " A", "logprob": -800.0}, {"token": "A", "logprob": -800.0}])
    assert lps["A"] == pytest.approx(-800.0 + math.log(2))
