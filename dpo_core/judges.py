"""Judges for win rates (Fig. 2 right, Fig. 3): is a policy's completion better than a reference text?

Every judge has one method, `judge(contexts, candidates, references) -> list of verdicts`, one
verdict per item: "win" (the candidate is better), "loss", "tie" or "invalid" (a reply that
could not be parsed). Nothing is guessed: ties and invalid replies are counted and reported.

    GoldRewardJudge   offline: the gold sentiment classifier says which text is more positive
    ChatJudge         the paper's GPT-4 judge (App. C.2 prompts) over any OpenAI-compatible
                      chat-completions endpoint; random A/B order, strict parsing, retries,
                      replies cached on disk; the API key is read from the environment only
    LocalJudge        the same prompts, offline: a GGUF chat model run in-process by llama.cpp
                      (xllamacpp); both orders judged, verdicts read from the letters' log-probs
    letter_logprobs, order_swap_verdict   the local judge's two rules, as pure functions
    win_rate          verdicts -> win rate with its binomial standard error
    win_rate_sweep    one policy's win rate at each temperature; sweep_policies: several policies
"""

import hashlib
import json
import math
import os
import random
import re
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

from dpo_core import assets, progress
from dpo_core.assets import load_reward
from dpo_core.results import atomic_write

VERDICTS = ("win", "loss", "tie", "invalid")


def win_rate(verdicts):
    """Win rate over the valid verdicts, a tie counting half, with the binomial standard error
    sqrt(p (1 - p) / n). Returns a dict with the counts of each verdict too."""
    counts = {v: sum(1 for x in verdicts if x == v) for v in VERDICTS}
    unknown = set(verdicts) - set(VERDICTS)
    if unknown:
        raise ValueError(f"unknown verdicts {sorted(unknown)}; expected one of {VERDICTS}")
    n = counts["win"] + counts["loss"] + counts["tie"]
    rate = (counts["win"] + 0.5 * counts["tie"]) / n if n else float("nan")
    stderr = math.sqrt(rate * (1 - rate) / n) if n else float("nan")
    return {"win_rate": rate, "stderr": stderr, "n": n, **{f"n_{v}": c for v, c in counts.items()}}


class GoldRewardJudge:
    """The candidate wins when the gold classifier finds context + candidate more positive than
    context + reference (compared on the log-odds, so saturated probabilities still differ;
    exactly equal scores are a tie). An offline stand-in for the paper's GPT-4: it judges
    sentiment only, not fluency or relevance."""

    name = "gold-reward"

    def __init__(self, reward):
        self.reward = reward

    def judge(self, contexts, candidates, references):
        scores = self.reward.logits([c + x for c, x in zip(contexts, candidates)] +
                                    [c + r for c, r in zip(contexts, references)])
        n = len(candidates)
        return ["win" if a > b else "loss" if a < b else "tie" for a, b in zip(scores[:n].tolist(), scores[n:].tolist())]


# App. C.2, verbatim (the first three). {context}, {a}, {b} are filled in; the second item names the verdict field.
PROMPTS = {
    "summarization": (
        "Which of the following summaries does a better job of summarizing the most important points in the "
        "given forum post?\n\nPost:\n{context}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\n"
        "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
        'SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should use the format:\n'
        'Comparison: <one-sentence comparison and explanation>\nPreferred: <"A" or "B">',
        "Preferred",
    ),
    "summarization_concise": (
        "Which of the following summaries does a better job of summarizing the most important points in the "
        "given forum post, without including unimportant or irrelevant details? A good summary is both precise "
        "and concise.\n\nPost:\n{context}\n\nSummary A:\n{a}\n\nSummary B:\n{b}\n\n"
        "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
        'SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should use the format:\n'
        'Comparison: <one-sentence comparison and explanation>\nPreferred: <"A" or "B">',
        "Preferred",
    ),
    "dialogue": (
        "For the following query to a chatbot, which response is more helpful?\n\nQuery: {context}\n\n"
        "Response A:\n{a}\n\nResponse B:\n{b}\n\n"
        "FIRST provide a one-sentence comparison of the two responses and explain which you feel is more helpful. "
        'SECOND, on a new line, state only "A" or "B" to indicate which response is more helpful. '
        "Your response should use the format:\n"
        'Comparison: <one-sentence comparison and explanation>\nMore helpful: <"A" or "B">',
        "More helpful",
    ),
    # Not the paper's: the IMDb task in the same shape, for the local judge's agreement with the gold
    # classifier (Table 2's analogue compares a prompt with the comparison sentence and one without).
    "sentiment": (
        "Which of the following continuations of a movie review expresses the more positive opinion?\n\n"
        "Review opening:\n{context}\n\nContinuation A:\n{a}\n\nContinuation B:\n{b}\n\n"
        "FIRST provide a one-sentence comparison of the two continuations, explaining which you find more positive "
        'and why. SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should use '
        'the format:\nComparison: <one-sentence comparison and explanation>\nMore positive: <"A" or "B">',
        "More positive",
    ),
    "sentiment_simple": (
        "Which of the following continuations of a movie review expresses the more positive opinion?\n\n"
        "Review opening:\n{context}\n\nContinuation A:\n{a}\n\nContinuation B:\n{b}\n\n"
        'State only "A" or "B" to indicate your choice, in the format:\nMore positive: <"A" or "B">',
        "More positive",
    ),
}


def fill_prompt(task, context, a, b):
    """PROMPTS[task] with the context and the two texts, A first."""
    template, _ = PROMPTS[task]
    return template.format(context=context, a=a, b=b)


class JudgeError(RuntimeError):
    pass


def parse_choice(reply, field):
    """'A' or 'B' from the line `<field>: A` (quotes allowed), or None when the reply has no such
    line or more than one: malformed replies are counted, never guessed."""
    found = re.findall(rf'^\s*{re.escape(field)}:\s*"?([AB])"?\s*\.?\s*$', reply or "", flags=re.MULTILINE)
    return found[0] if len(found) == 1 else None


class ChatJudge:
    """GPT-4-style pairwise judge over `POST {base_url}/chat/completions`.

    Args:
        task: a key of PROMPTS (summarization, summarization_concise, dialogue).
        model: the judge model name (the paper: gpt-4-0314).
        base_url: an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1.
        cache_dir: replies are stored here by a hash of the request, so a rerun costs nothing.
        api_key_env: the environment variable that holds the key; the key is never stored.
        seed: decides, per item, whether the candidate is shown as A or as B.
    """

    name = "chat"

    def __init__(self, task, model, base_url, cache_dir, api_key_env="OPENAI_API_KEY", seed=0,
                 max_retries=5, backoff_s=1.0, timeout_s=60.0, max_tokens=256):
        if task not in PROMPTS:
            raise ValueError(f"unknown judge task {task!r}; choose one of {sorted(PROMPTS)}")
        self.task, self.model, self.base_url = task, model, base_url.rstrip("/")
        self.cache_dir, self.api_key_env, self.seed = Path(cache_dir), api_key_env, seed
        self.max_retries, self.backoff_s, self.timeout_s, self.max_tokens = max_retries, backoff_s, timeout_s, max_tokens

    def candidate_is_a(self, index):
        """The seeded coin that puts the candidate first (as A) for item `index`."""
        return random.Random(f"{self.seed}:{index}").random() < 0.5

    def prompt(self, context, a, b):
        return fill_prompt(self.task, context, a, b)

    def judge(self, contexts, candidates, references):
        _, field = PROMPTS[self.task]
        verdicts = []
        for i, (context, candidate, reference) in enumerate(zip(contexts, candidates, references)):
            first = self.candidate_is_a(i)
            a, b = (candidate, reference) if first else (reference, candidate)
            choice = parse_choice(self.complete(self.prompt(context, a, b)), field)
            if choice is None:
                verdicts.append("invalid")
            else:
                verdicts.append("win" if (choice == "A") == first else "loss")
        return verdicts

    def complete(self, prompt):
        """The judge's reply to one prompt, from the cache or the endpoint."""
        request = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                   "temperature": 0, "max_tokens": self.max_tokens}
        return cached_reply(self.cache_dir, [self.base_url, request], lambda: self._post(request))

    def _post(self, request):
        api_key = os.environ.get(self.api_key_env)
        if not api_key:
            raise JudgeError(f"the judge needs an API key in ${self.api_key_env} (read from the environment only, "
                             "never from parameters); export it and run again")
        data = json.dumps(request).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        for attempt in range(self.max_retries + 1):
            try:
                req = urllib.request.Request(f"{self.base_url}/chat/completions", data=data, headers=headers)
                with urllib.request.urlopen(req, timeout=self.timeout_s) as response:
                    body = json.loads(response.read())
                return body["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as error:
                retryable = error.code == 429 or error.code >= 500
                if not retryable or attempt == self.max_retries:
                    raise JudgeError(f"judge endpoint answered HTTP {error.code} ({error.reason}) "
                                     f"after {attempt + 1} attempt(s)") from None
                wait = float(error.headers.get("Retry-After") or self.backoff_s * 2**attempt)
            except (urllib.error.URLError, TimeoutError) as error:
                if attempt == self.max_retries:
                    raise JudgeError(f"judge endpoint unreachable after {attempt + 1} attempt(s): {error}") from None
                wait = self.backoff_s * 2**attempt
            time.sleep(wait)


def letter_logprobs(top_logprobs):
    """{"A": log p, "B": log p} at one position, from its `top_logprobs` (OpenAI's shape: a list of
    {"token", "logprob"}). A letter's probability sums over every token that reads as it once spaces
    and quotes are stripped (" A", "A", '"A'); a letter not among them gets -inf."""
    found = {"A": [], "B": []}
    for entry in top_logprobs:
        text = entry["token"].strip().strip('"\'')
        if text in found:
            found[text].append(entry["logprob"])
    return {letter: _logsumexp(lps) for letter, lps in found.items()}


def _logsumexp(values):
    if not values:
        return -math.inf
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def order_swap_verdict(first, second):
    """The verdict of one comparison judged in both orders. `first`: the letter the judge chose with
    the candidate shown as A; `second`: with the candidate shown as B; None where no letter was read.
    "win" when it chose the candidate both times, "loss" when the reference both times, "tie" when it
    chose the same position both times (inconsistent: position, not content, decided), "invalid"
    when either order gave no letter."""
    if first not in ("A", "B") or second not in ("A", "B"):
        return "invalid"
    if (first == "A") == (second == "B"):
        return "win" if first == "A" else "loss"
    return "tie"


def cached_reply(cache_dir, key_parts, ask):
    """The reply stored under a hash of `key_parts` in `cache_dir`, or `ask()`'s, stored (atomically).
    A stored file that cannot be read back is reported and asked again."""
    path = Path(cache_dir) / f"{hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())["reply"]
        except (ValueError, KeyError, TypeError):
            print(f"[judge] {path} is corrupt; asking again")
    reply = ask()
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"request": key_parts[-1], "reply": reply}))
    return reply


_SERVERS = {}  # (model path, threads, n_ctx) -> llama.cpp server: one per model in a process


class LocalJudge:
    """The App. C.2 judge offline: a GGUF chat model (`assets.JUDGE_MODELS`, or a path to a .gguf) run
    in this process by llama.cpp through xllamacpp, at temperature 0.

    Every comparison is judged twice, the candidate shown first as A and then as B
    (`order_swap_verdict`: an inconsistent pair is a tie). In each order the judge first writes the
    one-sentence comparison when its prompt asks for one (App. C.2's do; up to `explain_tokens`
    tokens, to the end of the line), then "<field>:" is appended to its answer and the verdict is the
    more likely of the two letters at the next token (`letter_logprobs`), read after a space or quote
    when the judge opens its answer with one ('Preferred: "A"'); neither letter among the
    `top_logprobs` most likely tokens, or a prompt longer than the context, is an invalid verdict,
    counted, never guessed. Replies are cached on disk by (judge, model sha256, runtime version, request).

    llama.cpp also starts its HTTP server, bound to 127.0.0.1 at a random port; it is given a random
    key that nothing else knows, so every endpoint but its /health probe refuses requests over HTTP (401).
    """

    name = "local"

    def __init__(self, task, model, cache_dir, explain_tokens=48, threads=0, n_ctx=4096, top_logprobs=20):
        if task not in PROMPTS:
            raise ValueError(f"unknown judge task {task!r}; choose one of {sorted(PROMPTS)}")
        self.task, self.model, self.cache_dir = task, model, Path(cache_dir)
        self.path = assets.judge_model_path(model)  # a missing model stops here, with the command to prepare it
        self.explain = "Comparison:" in PROMPTS[task][0]  # the judge writes its comparison when the prompt asks
        self.explain_tokens, self.top_logprobs = explain_tokens, top_logprobs
        self.threads, self.n_ctx = threads or os.cpu_count(), n_ctx
        self.sha256 = assets.JUDGE_MODELS[model][2] if model in assets.JUDGE_MODELS else assets.sha256_file(self.path)
        self.uncached = 0  # requests that reached the model in this process (0: every reply came from the cache)

    def prompt(self, context, a, b):
        return fill_prompt(self.task, context, a, b)

    def server(self):
        """llama.cpp's server for this model, started at the first uncached request (a cached rerun never
        loads the model) after checking the model file's sha256, and shared by every judge of the process."""
        key = (str(self.path), self.threads, self.n_ctx)
        if key not in _SERVERS:
            if assets.sha256_file(self.path) != self.sha256:
                raise JudgeError(f"{self.path} does not match its pinned sha256; delete it and run `make judge-assets`")
            xllamacpp = assets.load_xllamacpp()
            params = xllamacpp.CommonParams()
            params.model.path = str(self.path)
            params.n_ctx, params.n_parallel, params.verbosity = self.n_ctx, 1, 0
            params.cpuparams.n_threads = params.cpuparams_batch.n_threads = self.threads
            params.hostnames = ["127.0.0.1"]
            params.api_keys = [secrets.token_hex(16)]  # its HTTP server refuses everyone: only this process asks
            server = xllamacpp.Server(params)
            if not server.listening_address.startswith("http://127.0.0.1:"):
                raise JudgeError(f"llama.cpp's server bound {server.listening_address}, not loopback")
            _SERVERS[key] = server
        return _SERVERS[key]

    def ask(self, request):
        """One chat completion, from the cache or the model; None when the prompt does not fit the context."""
        def from_model():
            self.uncached += 1
            return self.server().handle_chat_completions(request)

        key = [self.name, self.sha256, assets.PACKAGES["xllamacpp"].version, request]
        reply = cached_reply(self.cache_dir, key, from_model)
        if "choices" in reply:
            return reply
        if "context" in json.dumps(reply).lower():  # llama.cpp: the request exceeds the context size
            return None
        raise JudgeError(f"the local judge failed: {str(reply)[:300]}")

    def comparison(self, user):
        """The one-sentence comparison the prompt asks for first (greedy, to the end of its line)."""
        opening = "Comparison:"
        reply = self.ask({"messages": [user, {"role": "assistant", "content": opening}], "temperature": 0,
                          "max_tokens": self.explain_tokens, "stop": ["\n"]})
        if reply is None:
            return None
        return reply["choices"][0]["message"]["content"].removeprefix(opening).split("\n")[0].strip()

    def letter_step(self, user, answer):
        """{"A": log p, "B": log p} at the token after `answer` (the judge's answer up to "<field>:");
        when the most likely token there is a space or a quote, one token further."""
        for _ in range(2):
            reply = self.ask({"messages": [user, {"role": "assistant", "content": answer}], "temperature": 0,
                              "max_tokens": 1, "logprobs": True, "top_logprobs": self.top_logprobs})
            if reply is None:
                return {"A": -math.inf, "B": -math.inf}
            top = ((reply["choices"][0].get("logprobs") or {}).get("content") or [{"top_logprobs": []}])[0]["top_logprobs"]
            best = max(top, key=lambda entry: entry["logprob"])["token"] if top else "x"
            if best.strip(' "\''):  # a letter, or another word: read the letters here
                break
            answer += best
        return letter_logprobs(top)

    def letters(self, context, a, b):
        """One order: {"comparison": the judge's sentence, "A": log p, "B": log p, "letter": "A", "B" or None}."""
        _, field = PROMPTS[self.task]
        user = {"role": "user", "content": self.prompt(context, a, b)}
        comparison = self.comparison(user) if self.explain else ""
        if comparison is None:  # the prompt alone does not fit the context
            return {"comparison": "", "A": -math.inf, "B": -math.inf, "letter": None}
        answer = f"Comparison: {comparison}\n{field}:" if self.explain else f"{field}:"
        lps = self.letter_step(user, answer)
        letter = None if max(lps.values()) == -math.inf else max(lps, key=lps.get)
        return {"comparison": comparison, **lps, "letter": letter}

    def judge_details(self, contexts, candidates, references):
        """Per item, both orders: {"verdict", "first", "second" (the letters), "consistent", "logprob_margin"
        (log p(candidate's letter) - log p(reference's), averaged over the orders; None when a letter was
        not read), the two comparisons}."""
        rows = []
        with progress.bar(len(candidates), f"local judge ({Path(self.model).name})") as bar:
            for context, candidate, reference in zip(contexts, candidates, references):
                first = self.letters(context, candidate, reference)  # candidate shown as A
                second = self.letters(context, reference, candidate)  # candidate shown as B
                verdict = order_swap_verdict(first["letter"], second["letter"])
                margin = ((first["A"] - first["B"]) + (second["B"] - second["A"])) / 2
                rows.append({"verdict": verdict, "first": first["letter"], "second": second["letter"],
                             "consistent": verdict in ("win", "loss"),
                             "logprob_margin": margin if math.isfinite(margin) else None,
                             "comparison_first": first["comparison"], "comparison_second": second["comparison"]})
                bar.update()
        return rows

    def judge(self, contexts, candidates, references):
        return [row["verdict"] for row in self.judge_details(contexts, candidates, references)]


def order_swap_summary(rows):
    """How often the two orders disagree, over the comparisons where both gave a letter: counts, the
    rate, and its binomial standard error (rows from `LocalJudge.judge_details`)."""
    valid = [row for row in rows if row["verdict"] != "invalid"]
    n, ties = len(valid), sum(row["verdict"] == "tie" for row in valid)
    rate = ties / n if n else float("nan")
    return {"n": n, "n_inconsistent": ties, "n_invalid": len(rows) - n, "inconsistency": rate,
            "stderr": math.sqrt(rate * (1 - rate) / n) if n else float("nan")}


def make_judge(spec, task, cache_dir, base_url="https://api.openai.com/v1", seed=0, threads=0):
    """A judge from a notebook parameter: `chat:<model>` (e.g. chat:gpt-4-0314, the paper's) asks
    an OpenAI-compatible endpoint with the App. C.2 prompt `task`; `local:<model>` runs that prompt
    offline (`LocalJudge`, on `threads` threads, 0: all; e.g. local:qwen2.5-coder-1.5b, local:<path>.gguf, or
    local:tiny, the tests' model that always answers A); `reward:<name>`
    compares the two texts with a reward classifier (`assets.load_reward`), a sentiment-only stand-in."""
    kind, _, name = spec.partition(":")
    if kind == "chat" and name:
        return ChatJudge(task, name, base_url, cache_dir, seed=seed)
    if kind == "local" and name:
        return LocalJudge(task, name, cache_dir, threads=threads)
    if kind == "reward" and name:
        return GoldRewardJudge(load_reward(name))
    raise ValueError(f"unknown judge {spec!r}; use chat:<model> (e.g. chat:gpt-4-0314), local:<model> "
                     "(e.g. local:qwen2.5-coder-1.5b) or reward:<name> (e.g. reward:tiny)")


def win_rate_sweep(generate, judge, contexts, references, temperatures, row=None):
    """A policy's win rate at each sampling temperature (Fig. 2 right): `generate(temperature)`
    -> one candidate text per item, judged against `references` (with `contexts`).

    Returns (rows, samples): one row per temperature ({**row, temperature, judge, win_rate,
    stderr, counts}) and one dict per item and temperature (context, candidate, reference, verdict).
    """
    rows, samples = [], []
    with progress.bar(len(temperatures), "win rates") as bar:
        for temperature in map(float, temperatures):
            candidates = generate(temperature)
            verdicts = judge.judge(contexts, candidates, references)
            rows.append({**(row or {}), "temperature": temperature, "judge": judge.name, **win_rate(verdicts)})
            samples += [{"temperature": temperature, "context": c, "candidate": x, "reference": r, "verdict": v}
                        for c, x, r, v in zip(contexts, candidates, references, verdicts)]
            last = rows[-1]
            bar.write(f"{(row or {}).get('method', '')} T = {temperature:.2f}: win rate {last['win_rate']:.3f} "
                      f"+- {last['stderr']:.3f} ({last['n_win']} wins, {last['n_tie']} ties, {last['n_loss']} losses, "
                      f"{last['n_invalid']} invalid)")
            bar.update()
    return rows, samples


def sweep_policies(policies, judge, contexts, references, temperatures):
    """`win_rate_sweep` for several policies against the same references: `policies` is a list of
    (row, generate), row holding at least the method. Returns (rows, samples), the samples tagged
    with their method."""
    rows, samples = [], []
    for row, generate in policies:
        policy_rows, policy_samples = win_rate_sweep(generate, judge, contexts, references, temperatures, row)
        rows += policy_rows
        samples += [{"method": row["method"], **s} for s in policy_samples]
    return rows, samples
