"""OllamaClient against a scripted Ollama server over real loopback HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import ollama
import pytest

from orchestrator.llm.client import (
    ChatResult,
    GenerationOptions,
    LLMError,
    ModelMissing,
    OllamaClient,
    ServerUnreachable,
    default_host,
    full_model_name,
    normalize_host,
    takes_schema_format,
)
from orchestrator.llm.models import auto_num_ctx
from orchestrator.llm.text import valid_unicode
from orchestrator.search.diagnosis import DIAGNOSIS_SCHEMA
from tests.fake_ollama import FakeOllama, Reply
from tests.replies import VALID_NET, diagnosis_json, prose_wrapped

CODER = "qwen2.5-coder:7b"
IMPROVER = "llama3.1"


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models={CODER: "a" * 64, IMPROVER: "b" * 64}) as fake:
        yield fake


def make_client(
    fake: FakeOllama, warnings: list[str] | None = None, retries: int = 4, **opts: object
) -> OllamaClient:
    options = GenerationOptions(**opts)  # type: ignore[arg-type]
    sink = warnings.append if warnings is not None else None
    return OllamaClient(fake.url, options, retries=retries, on_warning=sink, backoff=0.0)


# -- chat ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [True, False])
def test_chat_round_trip(server: FakeOllama, stream: bool) -> None:
    reply = prose_wrapped(VALID_NET)
    server.add_script(Reply(content=reply, prompt_eval_count=321))
    progress: list[int] = []
    with make_client(server) as client:
        result = client.chat(
            CODER, "Write a CNN.", seed=7, stream=stream, on_progress=progress.append
        )
    assert isinstance(result, ChatResult)
    assert result.text == reply
    assert (result.model, result.seed, result.prompt_tokens) == (CODER, 7, 321)
    assert result.completion_tokens and result.completion_tokens > 10
    assert result.done_reason == "stop" and not result.truncated
    assert server.chat_requests()[0]["stream"] is stream
    if stream:
        assert progress == list(range(1, len(progress) + 1)) and len(progress) > 10
    else:
        assert progress == []


def test_options_and_format_reach_the_server(server: FakeOllama) -> None:
    server.add_script(Reply(content=diagnosis_json("r", "i", "s")))
    messages = [{"role": "system", "content": "You diagnose."}, {"role": "user", "content": "Hi"}]
    client = make_client(server, temperature=0.2, top_p=0.5, num_predict=512, num_ctx=8192)
    client.chat(IMPROVER, messages, seed=1234, format=DIAGNOSIS_SCHEMA)
    body = server.chat_requests()[0]
    assert body["model"] == IMPROVER
    assert body["messages"] == messages
    assert body["format"] == DIAGNOSIS_SCHEMA
    assert body["keep_alive"] == "30m"
    assert body["options"] == {
        "temperature": 0.2, "top_p": 0.5, "num_predict": 512, "num_ctx": 8192, "seed": 1234,
    }


def sent_num_ctx(fake: FakeOllama) -> list[int]:
    return [b["options"]["num_ctx"] for b in fake.chat_requests()]


def test_num_ctx_is_one_per_model_whatever_the_prompt_size(server: FakeOllama) -> None:
    server.add_script(*[Reply(content="ok")] * 5)
    warnings: list[str] = []
    client = make_client(server, warnings, num_predict=2048)
    assert client.models.set_num_ctx({CODER: 10240}) == {CODER: 10240}
    results = [client.chat(CODER, prompt) for prompt in ("short", "x" * 20_000, "y" * 900)]
    assert sent_num_ctx(server) == [r.num_ctx for r in results] == [10240] * 3
    # A model nobody sized starts from its first prompt (ceil(20000/3) + 2048 = 8715 -> 9216).
    assert client.chat(IMPROVER, "x" * 20_000).num_ctx == 9216
    assert client.chat(IMPROVER, "short").num_ctx == 9216  # never shrinks
    assert server.loads() == {CODER: 1, full_model_name(IMPROVER): 1} and server.reloads() == 0
    assert warnings == []
    assert "seed" not in server.chat_requests()[0]["options"]
    assert "format" not in server.chat_requests()[0]


def test_num_ctx_never_changes_a_longer_prompt_is_cut_with_a_warning(server: FakeOllama) -> None:
    # Ollama reloads a model whose num_ctx changes, into whatever GPU memory the candidates
    # left it: a run keeps one num_ctx per model, and the drop rules keep prompts within it.
    server.add_script(*[Reply(content="ok")] * 3)
    warnings: list[str] = []
    client = make_client(server, warnings, num_predict=2048)
    client.models.set_num_ctx({CODER: 4096})
    assert client.models.fits(CODER, [{"role": "user", "content": "x" * 6000}])
    assert not client.models.fits(CODER, [{"role": "user", "content": "x" * 6200}])
    for prompt in ("short", "x" * 20_000, "short"):
        client.chat(CODER, prompt)
    assert sent_num_ctx(server) == [4096, 4096, 4096]
    assert len(warnings) == 1 and "truncated" in warnings[0] and "4096" in warnings[0]
    assert server.loads() == {CODER: 1}


def test_num_ctx_is_capped_at_the_models_context_length() -> None:
    with FakeOllama(models=[CODER], context_length=8192,
                    default=Reply(content="ok")) as fake:
        warnings: list[str] = []
        client = make_client(fake, warnings, num_predict=2048)
        assert client.models.context_length(CODER) == 8192
        assert client.models.set_num_ctx({CODER: 20480}) == {CODER: 8192}
        assert client.chat(CODER, "x" * 24_000).num_ctx == 8192  # needs 10240: no growth
        assert warnings == [] and fake.reloads() == 0


def test_a_given_num_ctx_is_used_for_every_model_capped_with_a_warning() -> None:
    with FakeOllama(models=[CODER, IMPROVER], context_length=16384,
                    default=Reply(content="ok")) as fake:
        warnings: list[str] = []
        client = make_client(fake, warnings, num_ctx=6144)
        fixed = client.models.set_num_ctx({CODER: 20480, IMPROVER: 4096})
        assert fixed == {CODER: 6144, IMPROVER: 6144}
        assert warnings == []
        client.chat(CODER, "short")
        client.chat(IMPROVER, "x " * 15_000)  # needs 12288: a given num_ctx does not grow
        assert sent_num_ctx(fake) == [6144, 6144]
        assert len(warnings) == 1 and "truncated" in warnings[0]
        big = make_client(fake, warnings, num_ctx=65536)
        assert big.models.set_num_ctx({CODER: 4096}) == {CODER: 16384}
        assert len(warnings) == 2 and "65536" in warnings[1] and "16384" in warnings[1]
        assert big.chat(CODER, "short").num_ctx == 16384


def test_no_cap_when_the_server_does_not_state_the_context_length(server: FakeOllama) -> None:
    client = make_client(server)
    client.client.show = lambda model: ollama.ShowResponse(  # type: ignore[method-assign]
        model_info={"general.architecture": "llama"})
    assert client.models.context_length(CODER) is None
    assert client.models.set_num_ctx({CODER: 65536}) == {CODER: 65536}


def test_an_unsized_models_first_prompt_fixes_its_num_ctx_across_threads(
        server: FakeOllama) -> None:
    client = make_client(server, num_predict=1024)
    sizes = [3 * 1024 * k for k in range(1, 25)]  # need 4096 .. 25600
    start = threading.Barrier(len(sizes))
    got: dict[int, int] = {}

    def ask(chars: int) -> None:
        start.wait()
        got[chars] = client.models.num_ctx_for(CODER, chars)

    threads = [threading.Thread(target=ask, args=(chars,)) for chars in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (fixed,) = set(got.values())
    assert fixed in {auto_num_ctx(chars, 1024) for chars in sizes}
    assert client.models.num_ctx_for(CODER, 10**6) == fixed


def test_auto_num_ctx_rule() -> None:
    assert auto_num_ctx(0, 2048) == 4096
    assert auto_num_ctx(3 * 3000, 1096) == 4096
    assert auto_num_ctx(3 * 3000 + 3, 1096) == 5120
    assert auto_num_ctx(30_000, 2048) % 1024 == 0


@pytest.mark.parametrize("stream", [True, False])
def test_keep_alive_is_in_every_chat_request(server: FakeOllama, stream: bool) -> None:
    server.add_script(Reply(status=503), Reply(content="ok"), Reply(content='{"reason": "ok"}'))
    client = make_client(server, keep_alive="1h")
    client.chat(CODER, "go", stream=stream)
    client.chat(IMPROVER, "diagnose", format="json", stream=stream)
    assert [b["keep_alive"] for b in server.chat_requests()] == ["1h"] * 3


def test_callable_script_item_sees_the_request(server: FakeOllama) -> None:
    server.add_script(lambda body: Reply(content=f"seed={body['options']['seed']}"))
    assert make_client(server).chat(CODER, "go", seed=99).text == "seed=99"


@pytest.mark.parametrize("stream", [True, False])
def test_lone_surrogates_from_the_server_are_replaced(server: FakeOllama, stream: bool) -> None:
    # The fake sends them as JSON escapes; json decoding turns those into unencodable text.
    server.add_script(Reply(content="x = 1  # \ud800 and \udfff\ny = '\ud83d\ude00'"))
    text = make_client(server).chat(CODER, "go", stream=stream).text
    assert text == "x = 1  # \ufffd and \ufffd\ny = '\U0001f600'"
    assert text.encode("utf-8")


def test_valid_unicode_joins_split_pairs_and_replaces_lone_halves() -> None:
    assert valid_unicode("a\ud83d" + "\ude00b\udfff") == "a\U0001f600b\ufffd"
    assert valid_unicode("plain \u00e9 \U0001f600") == "plain \u00e9 \U0001f600"


@pytest.mark.parametrize("stream", [True, False])
def test_a_reply_past_num_predict_is_cut(server: FakeOllama, stream: bool) -> None:
    # A server that ignores num_predict (Ollama does not): 30000 characters for 100 tokens.
    server.add_script(Reply(content="x = 1\n" * 5000, ignores_num_predict=True))
    warnings: list[str] = []
    result = make_client(server, warnings, num_predict=100).chat(CODER, "go", stream=stream)
    limit = GenerationOptions(num_predict=100).reply_char_limit()
    assert 600 <= limit < 30000
    assert result.text == ("x = 1\n" * 5000)[:limit]
    assert result.done_reason == "cut"
    assert any("cut" in w and "num_predict=100" in w for w in warnings)
    assert len(server.chat_requests()) == 1  # not retried


@pytest.mark.parametrize("stream", [True, False])
def test_a_reply_stopped_at_num_predict_says_length_and_is_warned(server: FakeOllama,
                                                                  stream: bool) -> None:
    """Ollama's runner stops a reply after num_predict tokens with done_reason "length": the
    result keeps what came, says so, and the run is told to raise num_predict."""
    server.add_script(Reply(content="ab " * 50))
    warnings: list[str] = []
    result = make_client(server, warnings, num_predict=20).chat(CODER, "go", stream=stream)
    assert (result.text, result.completion_tokens) == (" ".join(["ab"] * 20), 20)
    assert result.done_reason == "length"
    assert warnings == [f"{CODER}: the reply stopped at num_predict=20 tokens; set a larger "
                        "num_predict"]


def test_a_prompt_cut_to_the_model_s_context_length_is_flagged() -> None:
    """A client nobody sized asks num_ctx for its first prompt, but the server runs the model
    at most at its trained context length and cuts the prompt to it: the result is flagged,
    judged against the context the runner had."""
    with FakeOllama(models=[CODER], context_length=4096, default=Reply(content="ok")) as fake:
        warnings: list[str] = []
        result = make_client(fake, warnings).chat(CODER, "x" * 24_000)  # 6000 tokens here
    assert result.prompt_tokens == 4096  # the runner's cut (NewSequence)
    assert result.num_ctx == 4096 == fake.chat_requests()[0]["options"]["num_ctx"]
    assert result.truncated
    assert any("probably truncated" in w and "now 4096" in w for w in warnings), warnings


def test_older_messages_past_num_ctx_are_dropped_and_counted_out() -> None:
    """server/prompt.go, chatPrompt: a conversation longer than num_ctx loses its older
    messages (the system message and the last one stay); prompt_eval_count counts what was
    kept, and the client flags the cut."""
    messages = [{"role": "system", "content": "s" * 400},
                {"role": "user", "content": "u" * 30_000},
                {"role": "assistant", "content": "a" * 400},
                {"role": "user", "content": "q" * 4000}]
    with FakeOllama(models=[CODER], default=Reply(content="ok")) as fake:
        warnings: list[str] = []
        result = make_client(fake, warnings, num_ctx=4096).chat(CODER, messages)
    assert result.prompt_tokens == (400 + 400 + 4000) // 4
    assert result.truncated and warnings


@pytest.mark.parametrize("stream", [True, False])
def test_a_format_that_is_neither_json_nor_a_schema_fails(server: FakeOllama,
                                                          stream: bool) -> None:
    """llm/server.go, Completion: the client's diagnosis schema is taken; a schema llama.cpp
    cannot turn into a grammar fails the chat, and so does a format string other than "json"
    (which the ollama library does not even send)."""
    server.add_script(Reply(content=diagnosis_json("r", "i", "s")))
    client = make_client(server, retries=1)
    assert client.chat(IMPROVER, "x", format=DIAGNOSIS_SCHEMA, stream=stream).text
    with pytest.raises(LLMError, match="invalid JSON schema in format"):
        client.chat(IMPROVER, "x", format={"type": "objekt"}, stream=stream)
    raw = httpx.post(f"{server.url}/api/chat", json={
        "model": IMPROVER, "messages": [{"role": "user", "content": "x"}], "format": "yaml",
        "stream": stream}).text.strip()
    assert json.loads(raw.splitlines()[-1]) == {"error": 'invalid format: "\\"yaml\\""; '
                                                'expected "json" or a valid JSON Schema object'}


def test_under_a_format_only_what_its_grammar_allows_is_sent() -> None:
    """llm/server.go, Completion: a format becomes a grammar (grammarJSON, an object; or the
    schema's), so a finished reply is a JSON object of the schema. A scripted reply that is not
    is refused (500, and the test fails as the server closes); a conforming one is cut at
    num_predict as the runner cuts it; a plain default is answered as an instance of the
    grammar."""
    bounded = {**DIAGNOSIS_SCHEMA, "properties": {
        k: {**v, "maxLength": 4} for k, v in DIAGNOSIS_SCHEMA["properties"].items()}}
    fake = FakeOllama(models=[IMPROVER], default=Reply(content=VALID_NET))
    chat = ollama.Client(host=fake.url).chat
    message = [{"role": "user", "content": "diagnose"}]
    try:
        fake.add_script(Reply(content="The net is too small."), Reply(content='{"reason": 1}'),
                        Reply(content="[1]"), Reply(content=diagnosis_json("r", "i", "s")),
                        Reply(content=diagnosis_json("a long reason", "i", "s")))
        for fmt in (DIAGNOSIS_SCHEMA, DIAGNOSIS_SCHEMA, "json"):
            with pytest.raises(ollama.ResponseError) as refused:
                chat(IMPROVER, message, format=fmt, stream=False)
            assert refused.value.status_code == 500
        assert len(fake.script_errors) == 3, fake.script_errors
        cut = chat(IMPROVER, message, format=DIAGNOSIS_SCHEMA, options={"num_predict": 3})
        assert cut.done_reason == "length" and cut.message.content
        assert diagnosis_json("r", "i", "s").startswith(cut.message.content)
        with pytest.raises(ollama.ResponseError):  # over the schema's maxLength
            chat(IMPROVER, message, format=bounded, stream=False)
        default = json.loads(chat(IMPROVER, message, format=bounded).message.content)
        assert set(default) == {"reason", "inspiration", "suggestions"}
        assert all(isinstance(v, str) and len(v) <= 4 for v in default.values())
        assert chat(IMPROVER, message).message.content == VALID_NET  # no format: as scripted
    finally:
        fake.close()
    with pytest.raises(AssertionError, match="scripted replies no Ollama could send"):
        fake.check_script()


def test_each_model_is_judged_by_its_own_show() -> None:
    """Two models that differ in context length and in the thinking capability: each gets its
    own num_ctx cap and its own trace allowance (a client reading the other model's /api/show
    gives one of them the other's)."""
    from tests.fake_ollama import QWEN25_CODER_7B
    specs = {CODER: replace(QWEN25_CODER_7B, context_length=8192, thinking=True),
             IMPROVER: replace(QWEN25_CODER_7B, context_length=32768)}
    with FakeOllama(models=[CODER, IMPROVER], specs=specs, default=Reply(content="ok")) as fake:
        client = make_client(fake, num_ctx=16384, num_predict=512, think_tokens=1000)
        assert client.models.set_num_ctx({IMPROVER: 1, CODER: 1}) == {IMPROVER: 16384, CODER: 8192}
        assert (client.models.thinks(CODER), client.models.thinks(IMPROVER)) == (True, False)
        client.chat(IMPROVER, "x")
        client.chat(CODER, "x")
    sent = [(b["model"], b["options"]["num_ctx"], b["options"]["num_predict"])
            for b in fake.chat_requests()]
    assert sent == [(IMPROVER, 16384, 512), (CODER, 8192, 1512)]


def test_keep_alive_keeps_the_model_loaded_between_distant_calls() -> None:
    """server/sched.go: a model unloads when keep_alive runs out after its last request (5
    minutes unless the request says). The client's keep_alive (30 minutes) holds a model
    through iterations 20 minutes apart; it unloads once the run stops asking."""
    with FakeOllama(models=[CODER, IMPROVER], default=Reply(content="ok")) as fake:
        client = make_client(fake)
        for _ in range(3):
            client.chat(CODER, "x")
            fake.advance(20 * 60)
        assert fake.loads() == {full_model_name(CODER): 1}
        fake.advance(11 * 60)
        assert fake.running() == {}
        ollama.Client(host=fake.url).chat(IMPROVER, [{"role": "user", "content": "x"}])
        fake.advance(4 * 60)
        assert list(fake.running()) == [full_model_name(IMPROVER)]
        fake.advance(61)
        assert fake.running() == {} and client.models.running() == []


def test_options_of_the_wrong_type_fail_and_unknown_ones_are_ignored(server: FakeOllama) -> None:
    """api/types.go, Options.FromMap: an option of the wrong JSON type fails the request (a
    500 from scheduleRunner); an unknown key is only logged."""
    server.add_script(Reply(content="fine"))
    raw = ollama.Client(host=server.url)
    go = [{"role": "user", "content": "go"}]
    for options, error in (({"num_ctx": "4096"}, 'option "num_ctx" must be of type integer'),
                           ({"temperature": True}, 'option "temperature" must be of type float32'),
                           ({"stop": ["a", 1]}, 'option "stop" must be of an array of strings')):
        with pytest.raises(ollama.ResponseError) as info:
            raw.chat(CODER, go, options=options, stream=False)
        assert (info.value.status_code, info.value.error) == (500, error)
    reply = raw.chat(CODER, go, options={"num_ctxx": 1, "num_ctx": 4096.0}, stream=False)
    assert reply.message.content == "fine"


@pytest.mark.parametrize(("version", "takes"), [
    ("0.5.0", True), ("0.12.3", True), ("v0.6.1", True), ("1.0.0", True), ("0.5.0-rc1", True),
    ("unknown", True), ("0.4.7", False), ("0.3.13", False)])
def test_takes_schema_format(version: str, takes: bool) -> None:
    assert takes_schema_format(version) is takes


def test_a_server_before_0_5_rejects_a_schema_but_takes_json() -> None:
    with FakeOllama(models=[IMPROVER], version="0.4.7",
                    default=Reply(content=diagnosis_json("r", "i", "s"))) as old:
        client = make_client(old)
        with pytest.raises(LLMError, match="cannot unmarshal object"):
            client.chat(IMPROVER, "diagnose", format=DIAGNOSIS_SCHEMA)
        assert len(old.chat_requests()) == 1  # a 400 is not retried
        assert "suggestions" in client.chat(IMPROVER, "diagnose", format="json").text


@pytest.mark.parametrize("stream", [True, False])
def test_thinking_sent_apart_is_left_out_and_thinking_only_warns(stream: bool) -> None:
    with FakeOllama(models=[CODER], thinking=True) as server:
        server.add_script(Reply(thinking="Let me weigh the widths. " * 20, content="x = 1"),
                          Reply(thinking="Hmm. " * 500, content=""))
        warnings: list[str] = []
        client = make_client(server, warnings)
        assert client.chat(CODER, "go", stream=stream).text == "x = 1"
        assert warnings == []
        assert client.chat(CODER, "go", stream=stream).text == ""
    assert len(warnings) == 1 and "2500 characters of thinking and no answer" in warnings[0]


@pytest.mark.parametrize(("version", "thinking", "content"), [
    ("0.12.6", "Hmm.", "x = 1"), ("0.12.3", "", "<think>Hmm.</think>\nx = 1"),
    ("0.6.5", "", "<think>Hmm.</think>\nx = 1")])
def test_the_scripted_server_lets_a_model_that_can_think_think_unless_told_not_to(
        version: str, thinking: str, content: str) -> None:
    """server/routes.go, ChatHandler: with `think` absent, a model that can think thinks (on
    since 0.12.4; before, its template thinks in the text); `think: false` stops it, except
    before 0.9.0, which knows no `think`."""
    with FakeOllama(models=[CODER], thinking=True, version=version,
                    default=Reply(thinking="Hmm.", content="x = 1")) as server:
        raw = ollama.Client(server.url)
        absent = raw.chat(CODER, [{"role": "user", "content": "go"}], stream=False)
        off = raw.chat(CODER, [{"role": "user", "content": "go"}], think=False, stream=False)
    assert (absent.message.thinking or "", absent.message.content) == (thinking, content)
    assert off.message.content == ("x = 1" if version != "0.6.5" else content)
    assert not off.message.thinking


def test_the_scripted_server_refuses_think_to_a_model_that_cannot(server: FakeOllama) -> None:
    """server/routes.go, ChatHandler: `think: true` to a model without the "thinking"
    capability is a 400, before the model is loaded; `think: false` is accepted."""
    server.add_script(Reply(thinking="Hmm.", content="x = 1"))
    raw = ollama.Client(server.url)
    with pytest.raises(ollama.ResponseError) as refused:
        raw.chat(CODER, [{"role": "user", "content": "go"}], think=True, stream=False)
    assert refused.value.status_code == 400
    assert refused.value.error == f'"{CODER}" does not support thinking'
    assert server.running() == {}
    reply = raw.chat(CODER, [{"role": "user", "content": "go"}], think=False, stream=False)
    assert (reply.message.content, reply.message.thinking) == ("x = 1", None)


# -- retries ---------------------------------------------------------------------------------
def test_5xx_burst_then_success(server: FakeOllama) -> None:
    server.add_script(Reply(status=503), Reply(status=500), Reply(content="finally"))
    warnings: list[str] = []
    result = make_client(server, warnings, retries=4).chat(CODER, "go")
    assert result.text == "finally"
    assert len(server.chat_requests()) == 3
    assert len([w for w in warnings if "attempt" in w]) == 2


def test_5xx_forever_gives_up_after_retries() -> None:
    forever = Reply(status=500, error="CUDA error: out of memory")
    with FakeOllama(models=[CODER], default=forever) as fake:
        with pytest.raises(LLMError, match="CUDA error: out of memory") as info:
            make_client(fake, retries=3).chat(CODER, "go")
        assert len(fake.chat_requests()) == 3
    assert not isinstance(info.value, ServerUnreachable)


def test_mid_stream_error_is_retried(server: FakeOllama) -> None:
    server.add_script(
        Reply(content="import torch", error="model runner has unexpectedly stopped"),
        Reply(content="recovered"),
    )
    assert make_client(server).chat(CODER, "go").text == "recovered"
    assert len(server.chat_requests()) == 2


def test_slow_reply_times_out_then_fails() -> None:
    with FakeOllama(models=[CODER], default=Reply(content="late", delay=30.0)) as fake:
        client = make_client(fake, retries=2, request_timeout=0.2)
        with pytest.raises(LLMError, match="within 0.2s"):
            client.chat(CODER, "go")
        assert len(fake.chat_requests()) == 2


def test_slow_reply_then_fast_one_succeeds(server: FakeOllama) -> None:
    server.add_script(Reply(content="late", delay=30.0), Reply(content="on time"))
    client = make_client(server, retries=2, request_timeout=1.0, num_predict=64)
    assert client.chat(CODER, "go", stream=False).text == "on time"


def test_unknown_model_fails_at_once(server: FakeOllama) -> None:
    with pytest.raises(LLMError, match="ollama pull nope") as info:
        make_client(server).chat("nope", "go")
    assert isinstance(info.value, ModelMissing)
    assert len(server.requests) == 1  # a 404 (here to /api/show) is not retried


def test_4xx_is_not_retried(server: FakeOllama) -> None:
    server.add_script(Reply(status=400, error="invalid format schema"))
    with pytest.raises(LLMError, match="invalid format schema"):
        make_client(server).chat(CODER, "go")
    assert len(server.chat_requests()) == 1


# -- server reachability ---------------------------------------------------------------------
def test_check_server_returns_version(server: FakeOllama) -> None:
    assert make_client(server).check_server() == server.version


def dead_url() -> str:
    fake = FakeOllama()
    fake.close()
    return fake.url


def test_dead_server_is_unreachable() -> None:
    url = dead_url()
    client = OllamaClient(url, GenerationOptions(request_timeout=2.0), retries=2, backoff=0.0)
    for call in (client.check_server, lambda: client.chat(CODER, "go")):
        with pytest.raises(ServerUnreachable) as info:
            call()
        text = str(info.value)
        assert url in text and "ollama serve" in text and "docker compose up -d ollama" in text
        assert "OLLAMA_HOST" in text


# -- models ----------------------------------------------------------------------------------
def test_ensure_models_present_does_not_pull(server: FakeOllama) -> None:
    digests = make_client(server).models.ensure_models([CODER, IMPROVER], pull=True, progress=False)
    assert digests == {CODER: "a" * 64, IMPROVER: "b" * 64}
    assert "/api/pull" not in server.paths()


@pytest.mark.parametrize("progress", [False, True])
def test_missing_model_is_pulled(progress: bool) -> None:
    with FakeOllama(models=[IMPROVER], pullable={CODER: "c" * 64}) as fake:
        digests = make_client(fake).models.ensure_models([CODER, IMPROVER], pull=True,
                                                         progress=progress)
        assert digests[CODER] == "c" * 64
        pulls = [body for path, body in fake.requests if path == "/api/pull"]
        assert [(b["model"], b["stream"]) for b in pulls] == [(CODER, True)]
        assert full_model_name(CODER) in fake.models


def test_missing_model_without_pull(server: FakeOllama) -> None:
    with pytest.raises(ModelMissing, match="ollama pull mistral") as info:
        make_client(server).models.ensure_models(["mistral"], pull=False)
    assert "--no-pull" in str(info.value) and server.url in str(info.value)
    assert "/api/pull" not in server.paths()


def test_unpullable_model(server: FakeOllama) -> None:
    with pytest.raises(LLMError, match="file does not exist") as info:
        make_client(server).models.ensure_models(["no-such-model:1b"], pull=True, progress=False)
    assert not isinstance(info.value, ModelMissing)


def test_latest_tag_rule() -> None:
    assert full_model_name("llama3.1") == "llama3.1:latest"
    assert full_model_name("qwen2.5-coder:7b") == "qwen2.5-coder:7b"
    registry = "registry.local:5000/team/model"
    assert full_model_name(registry) == f"{registry}:latest"


# -- warnings --------------------------------------------------------------------------------
def test_truncation_warning_when_few_prompt_tokens_were_evaluated(server: FakeOllama) -> None:
    server.add_script(Reply(content="ok", prompt_eval_count=12))
    warnings: list[str] = []
    result = make_client(server, warnings).chat(CODER, "describe the results\n" * 1000)
    assert result.truncated
    assert any(CODER in w and "num_ctx" in w for w in warnings)


def test_truncation_warning_when_prompt_exceeds_fixed_num_ctx(server: FakeOllama) -> None:
    server.add_script(Reply(content="ok"))
    warnings: list[str] = []
    result = make_client(server, warnings, num_ctx=2048).chat(CODER, "y " * 10_000)
    assert result.truncated and any("num_ctx" in w for w in warnings)


def test_no_truncation_warning_for_a_realistic_count(server: FakeOllama) -> None:
    server.add_script(Reply(content="ok"))
    warnings: list[str] = []
    result = make_client(server, warnings).chat(CODER, "describe the results\n" * 1000)
    assert not result.truncated and warnings == []


# -- hosts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "http://127.0.0.1:11434"),
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        (":9999", "http://127.0.0.1:9999"),
        ("https://ollama.example.com", "https://ollama.example.com:443"),
        ("http://10.0.0.5:11434/", "http://10.0.0.5:11434"),
        ("[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


def test_default_host_reads_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert default_host() == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")
    assert default_host() == "http://0.0.0.0:11434"


def test_think_is_sent_only_when_set(server: FakeOllama) -> None:
    """A model that cannot think gets no trace allowance, with `think` unset or false."""
    client = make_client(server, num_predict=512, think_tokens=1000)
    server.add_script(Reply(content="a"), Reply(content="b"))
    client.chat(CODER, "x")
    client.chat(CODER, "x", think=False)
    plain, off = server.chat_requests()
    assert "think" not in plain and off["think"] is False
    assert [b["options"]["num_predict"] for b in (plain, off)] == [512, 512]


def test_a_model_that_can_think_gets_the_trace_allowance_unless_told_not_to() -> None:
    """A reasoning model's trace counts toward num_predict on the server, and with `think`
    unset Ollama lets a model that can think think: unless `think` is false, the request gets
    think_tokens more, so the trace cannot eat the answer's budget, in one num_ctx that holds
    them (no reload between calls)."""
    prompt = [{"role": "user", "content": "x" * 9000}]  # 3000 tokens: fits 4096 with 512 only
    with FakeOllama(models=[CODER], thinking=True, default=Reply(content="a")) as server:
        client = make_client(server, num_predict=512, think_tokens=1000)
        for think in (None, False, True):
            client.chat(CODER, "x", think=think)
        unset, off, on = server.chat_requests()
        fits = client.models.fits
        assert (fits(CODER, prompt), fits(CODER, prompt, False)) == (False, True)
    assert "think" not in unset and off["think"] is False and on["think"] is True
    assert [b["options"]["num_predict"] for b in (unset, off, on)] == [1512, 512, 1512]
    assert {b["options"]["num_ctx"] for b in (unset, off, on)} == {auto_num_ctx(1, 1512)}


def test_thinks_reads_the_capabilities(server: FakeOllama) -> None:
    assert make_client(server).models.thinks(CODER) is False
    with FakeOllama(models=[CODER], thinking=True) as reasoning:
        assert make_client(reasoning).models.thinks(CODER) is True
