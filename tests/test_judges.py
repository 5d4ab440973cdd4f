"""Judges: the win-rate arithmetic by hand, the gold-reward judge on clear texts, and the
chat judge against a stub OpenAI-compatible server on loopback (prompts, A/B order,
strict parsing, retries, caching, the API key)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from dpo_core.judges import PROMPTS, ChatJudge, GoldRewardJudge, JudgeError, parse_choice, win_rate

KEY = "sk-test-planted-key-0123456789"


def test_win_rate_counts_ties_half_and_excludes_invalid():
    out = win_rate(["win", "win", "loss", "tie", "invalid"])
    assert out["n"] == 4 and out["n_invalid"] == 1 and out["n_tie"] == 1
    assert out["win_rate"] == pytest.approx(2.5 / 4)
    assert out["stderr"] == pytest.approx((0.625 * 0.375 / 4) ** 0.5)
    with pytest.raises(ValueError, match="unknown verdicts"):
        win_rate(["win", "maybe"])


class FakeReward:
    """log-odds = number of 'good' minus number of 'bad' in the text."""

    def logits(self, texts):
        return torch.tensor([float(t.count("good") - t.count("bad")) for t in texts])


def test_gold_reward_judge_compares_context_plus_text_and_counts_ties():
    judge = GoldRewardJudge(FakeReward())
    verdicts = judge.judge(["It was ", "It was ", "It was "], ["good good", "bad", "fine"], ["good", "good", "okay"])
    assert verdicts == ["win", "loss", "tie"]


@pytest.mark.parametrize("reply, choice", [
    ("Comparison: A is tighter.\nPreferred: A", "A"),
    ('Comparison: B covers more.\nPreferred: "B"', "B"),
    ("Comparison: x\nPreferred: B.", "B"),
    ("Comparison: both fine\nPreferred: A or B", None),
    ("Preferred: A\nPreferred: B", None),
    ("I prefer A", None),
    ("", None),
])
def test_parse_is_strict(reply, choice):
    assert parse_choice(reply, "Preferred") == choice


class Stub:
    """A loopback chat-completions server; `script` is a list of (status, reply-or-None)."""

    def __init__(self, script=None, answer="A"):
        self.requests, self.script, self.answer = [], list(script or []), answer
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, reply = stub.script.pop(0) if stub.script else (200, None)
                if status != 200:
                    self.send_response(status)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                prompt = body["messages"][0]["content"]
                # answer with the letter of the text that contains "CANDIDATE" (or a fixed letter)
                if reply is None:
                    letter = self_answer(prompt, stub.answer)
                    reply = f"Comparison: one is better.\nPreferred: {letter}"
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def self_answer(prompt, answer):
    if answer == "candidate":
        a_part = prompt.split("Summary A:\n")[1].split("\n\nSummary B:")[0]
        return "A" if "CANDIDATE" in a_part else "B"
    return answer


@pytest.fixture
def stub_factory():
    stubs = []

    def make(**kwargs):
        stubs.append(Stub(**kwargs))
        return stubs[-1]

    yield make
    for s in stubs:
        s.close()


def judge_for(stub, tmp_path, **kwargs):
    return ChatJudge("summarization", "gpt-4-0314", stub.url, tmp_path / "replies", backoff_s=0.01, **kwargs)


def test_prompt_is_the_papers_and_the_order_is_randomised_by_the_seed(stub_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = stub_factory(answer="candidate")
    judge = judge_for(stub, tmp_path)
    n = 40
    verdicts = judge.judge(["POST"] * n, [f"CANDIDATE {i}" for i in range(n)], [f"reference {i}" for i in range(n)])
    assert verdicts == ["win"] * n  # the stub always picks the candidate, wherever it was placed
    prompts = [r["body"]["messages"][0]["content"] for r in stub.requests]
    assert prompts[0].startswith("Which of the following summaries does a better job of summarizing the most "
                                 "important points in the given forum post?")
    assert prompts[0].rstrip().endswith('Preferred: <"A" or "B">') and "Post:\nPOST" in prompts[0]
    first = [p.split("Summary A:\n")[1].startswith("CANDIDATE") for p in prompts]
    assert 10 < sum(first) < 30  # both orders occur
    assert first == [judge.candidate_is_a(i) for i in range(n)]
    assert stub.requests[0]["auth"] == f"Bearer {KEY}" and stub.requests[0]["path"] == "/v1/chat/completions"
    assert stub.requests[0]["body"]["model"] == "gpt-4-0314" and stub.requests[0]["body"]["temperature"] == 0
    other_seed = ChatJudge("summarization", "m", stub.url, tmp_path / "r2", seed=1)
    assert [other_seed.candidate_is_a(i) for i in range(n)] != first


def test_fixed_letter_maps_to_win_or_loss_by_position(stub_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    judge = judge_for(stub_factory(answer="A"), tmp_path)
    verdicts = judge.judge(["p"] * 20, ["c"] * 20, [f"r{i}" for i in range(20)])
    assert verdicts == ["win" if judge.candidate_is_a(i) else "loss" for i in range(20)]


def test_malformed_replies_are_counted_not_guessed(stub_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = stub_factory(script=[(200, "Both are good."), (200, "Comparison: x\nPreferred: C")])
    verdicts = judge_for(stub, tmp_path).judge(["p", "p", "p"], ["c1", "c2", "c3"], ["r1", "r2", "r3"])
    assert verdicts[:2] == ["invalid", "invalid"] and verdicts[2] in ("win", "loss")
    assert win_rate(verdicts)["n_invalid"] == 2


def test_retries_with_backoff_on_429_and_5xx_then_gives_up(stub_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = stub_factory(script=[(429, None), (503, None), (500, None)])
    assert judge_for(stub, tmp_path).judge(["p"], ["c"], ["r"])[0] in ("win", "loss")
    assert len(stub.requests) == 4
    stub = stub_factory(script=[(503, None)] * 10)
    with pytest.raises(JudgeError, match="HTTP 503") as error:
        judge_for(stub, tmp_path, max_retries=2).judge(["p"], ["c2"], ["r"])
    assert len(stub.requests) == 3 and KEY not in str(error.value)
    stub = stub_factory(script=[(401, None)])
    with pytest.raises(JudgeError, match="HTTP 401"):
        judge_for(stub, tmp_path).judge(["p"], ["c3"], ["r"])
    assert len(stub.requests) == 1  # a client error is not retried


def test_replies_are_cached_so_a_rerun_costs_nothing_and_needs_no_key(stub_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub = stub_factory(answer="B")
    args = (["p1", "p2"], ["c1", "c2"], ["r1", "r2"])
    first = judge_for(stub, tmp_path).judge(*args)
    assert len(stub.requests) == 2
    monkeypatch.delenv("OPENAI_API_KEY")
    assert judge_for(stub, tmp_path).judge(*args) == first
    assert len(stub.requests) == 2
    for path in (tmp_path / "replies").iterdir():
        assert KEY not in path.read_text()  # the key never lands in the cache


def test_missing_key_is_a_clear_error(stub_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    stub = stub_factory()
    with pytest.raises(JudgeError, match=r"\$OPENAI_API_KEY"):
        judge_for(stub, tmp_path).judge(["p"], ["c"], ["r"])
    assert stub.requests == []


def test_every_prompt_names_its_verdict_field_and_fills_its_slots():
    for template, field in PROMPTS.values():
        text = template.format(context="CTX", a="AAA", b="BBB")
        assert "CTX" in text and "AAA" in text and "BBB" in text and text.rstrip().endswith(f'{field}: <"A" or "B">')
    with pytest.raises(ValueError, match="unknown judge task"):
        ChatJudge("poetry", "m", "http://x", "/tmp")
