"""The legacy socket under hostile input, on a real Daphne server: every refusal is an ``error``
event and a documented close code with a close frame — never 1011 or a dropped connection —
and a fuzz of random messages in random order leaves the server answering REST, its memory
bounded and no session row running."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
from channels.testing import WebsocketCommunicator
from websockets.exceptions import ConnectionClosed

from accounts.tests.factories import make_key, make_org
from accounts.ws_auth import ApiKeyQueryAuthMiddleware
from agent_worker import contracts
from billing.models import BillingAccount
from billing.selectors import billing_account_get
from testsupport.fakes.openai_chat import FakeChatServer
from testsupport.fakes.sarvam import FakeSarvam, silence
from voice.consumers import VoiceAgentConsumer
from voice.legacy.protocol import MAX_MESSAGE_BYTES, MAX_TEXT_MESSAGE_BYTES, CloseCode
from voice.models import VoiceSession
from voice.tests.test_legacy_ws_protocol import documented_close_codes
from voice.tests.ws_support import (
    DAPHNE_TEST_MARKS,
    Closed,
    DaphneServer,
    WsCaller,
    config_message,
    provider_env,
    serve_daphne,
)

pytestmark = DAPHNE_TEST_MARKS

SARVAM_KEY = "sk-sarvam-fuzz"
CLARIFAI_PAT = "clarifai-pat-fuzz"
CONFIG_TIMEOUT_SECONDS = 2
LIVE = (VoiceSession.Status.CREATED, VoiceSession.Status.ACTIVE)
# Codes the WebSocket layer sends without an error event.
WS_LAYER = {CloseCode.WS_PROTOCOL_VIOLATION, CloseCode.WS_INVALID_PAYLOAD, CloseCode.WS_MESSAGE_TOO_BIG}


@pytest.fixture(scope="module")
def server(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[DaphneServer]:
    with (
        FakeSarvam(api_key=SARVAM_KEY, end_silence_ms=200) as sarvam,
        FakeChatServer(api_key=CLARIFAI_PAT) as chat,
        serve_daphne(
            django_db_blocker,
            tmp_path_factory,
            "daphne-fuzz",
            **provider_env(sarvam, chat, clarifai_pat=CLARIFAI_PAT),
            PROVIDER_MAX_LIVE_SESSIONS="50",
            LEGACY_WS_CONFIG_TIMEOUT_SECONDS=str(CONFIG_TIMEOUT_SECONDS),
        ) as daphne,
    ):
        yield daphne


@pytest.fixture
def key(db: None) -> str:
    return make_key(make_org(name="Hostile Clinic")).plaintext


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def send_then_close(server: DaphneServer, key: str, *messages: str | bytes, text: bool | None = None) -> WsCaller:
    caller = await WsCaller.open(server.ws_url(key))
    with contextlib.suppress(ConnectionClosed):
        for message in messages:
            await caller.ws.send(message, text=text)
    await caller.wait_closed()
    await caller.aclose()
    return caller


async def started_session(server: DaphneServer, key: str) -> tuple[WsCaller, str]:
    caller = await WsCaller.open(server.ws_url(key))
    started = await caller.configure()
    caller.start_streaming()
    return caller, started["session_id"]


def fatal_errors(caller: WsCaller) -> list[dict[str, Any]]:
    return [e for e in caller.of("error") if e["fatal"]]


def wait_for_no_live_sessions(timeout: float = 30.0) -> list[tuple[str, str]]:
    """The sessions still created/active once the server had ``timeout`` to end them."""
    deadline = time.monotonic() + timeout
    while True:
        live = list(VoiceSession.objects.filter(status__in=LIVE).values_list("id", "status"))
        if not live or time.monotonic() > deadline:
            return [(str(i), s) for i, s in live]
        time.sleep(0.2)


def metadata_config(metadata_json: str) -> str:
    return '{"type": "config", "metadata": ' + metadata_json + "}"


# ------------------------------------------------------------------------------ the first message


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (metadata_config('{"ticket": "T-1\\u0000"}'), "metadata"),
        (metadata_config('{"ticket": "\\ud800"}'), "metadata"),
        (metadata_config('{"\\udfff": "T-1"}'), "metadata"),
        (metadata_config('{"amount": 1e400}'), "metadata"),
        (metadata_config('{"amount": NaN}'), "metadata"),
        ('{"type": "config", "sample_rate": 1e400}', "sample_rate"),
    ],
    ids=["nul", "lone-surrogate", "surrogate-key", "overflowing-number", "nan", "overflowing-rate"],
)
def test_a_config_value_the_database_cannot_hold_is_a_field_error(server, key, message, field) -> None:
    caller = run(send_then_close(server, key, message))

    assert caller.closed == Closed(code=CloseCode.INVALID_CONFIG, reason="", frame=True)
    [error] = caller.events
    assert (error["code"], error["fatal"], list(error["fields"])) == ("validation_error", True, [field])
    assert "1e400" in error["message"] or field == "metadata"
    assert VoiceSession.objects.count() == 0


def test_a_first_message_nested_past_reading_is_a_protocol_error(server, key) -> None:
    deep = metadata_config('{"a": ' + "[" * 3000 + "]" * 3000 + "}")

    caller = run(send_then_close(server, key, deep))

    assert caller.closed == Closed(code=CloseCode.PROTOCOL_ERROR, reason="", frame=True)
    assert [(e["code"], e["fatal"]) for e in caller.events] == [("protocol_error", True)]


def test_a_text_message_over_the_limit_is_refused_unread(server, key) -> None:
    config = metadata_config(json.dumps({"note": "x" * MAX_TEXT_MESSAGE_BYTES}))

    caller = run(send_then_close(server, key, config))

    assert caller.closed == Closed(code=CloseCode.FRAME_TOO_LARGE, reason="", frame=True)
    assert [(e["code"], e["fatal"]) for e in caller.events] == [("frame_too_large", True)]


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_a_message_over_a_mebibyte_is_closed_with_1009_and_a_close_frame(server, key, kind) -> None:
    message: str | bytes = b"\x00" * (MAX_MESSAGE_BYTES + 2) if kind == "binary" else "x" * (MAX_MESSAGE_BYTES + 2)

    caller = run(send_then_close(server, key, message))

    assert caller.closed is not None
    assert (caller.closed.code, caller.closed.frame) == (CloseCode.WS_MESSAGE_TOO_BIG, True)


def test_text_that_is_not_utf8_is_closed_with_1007_and_a_close_frame(server, key) -> None:
    caller = run(send_then_close(server, key, b'{"type": "config", "voice": "\xff"}', text=True))

    assert caller.closed is not None
    assert (caller.closed.code, caller.closed.frame) == (CloseCode.WS_INVALID_PAYLOAD, True)


# ------------------------------------------------------------------------------ during the session


def test_unreadable_json_during_the_session_is_answered_and_the_call_goes_on(server, key) -> None:
    async def scenario() -> tuple[WsCaller, str]:
        caller, session_id = await started_session(server, key)
        for text in ("[" * 3000 + "]" * 3000, '{"type": "end", "at": NaN}', '{"type": "\\u0000"}'):
            await caller.ws.send(text)
        await caller.wait_for(lambda: len(caller.of("error")) >= 3)
        await caller.send_json({"type": "end"})
        await caller.wait_closed()
        await caller.aclose()
        return caller, session_id

    caller, session_id = run(scenario())

    assert [(e["code"], e["fatal"]) for e in caller.of("error")] == [("protocol_error", False)] * 3
    assert caller.closed == Closed(code=CloseCode.NORMAL, reason="", frame=True)
    row = VoiceSession.objects.get(pk=session_id)
    assert (row.status, row.end_reason) == (VoiceSession.Status.ENDED, "completed")


def test_a_text_message_over_the_limit_during_the_session_ends_it_as_failed(server, key) -> None:
    async def scenario() -> tuple[WsCaller, str]:
        caller, session_id = await started_session(server, key)
        await caller.ws.send('{"type": "end", "padding": "' + "x" * MAX_TEXT_MESSAGE_BYTES + '"}')
        await caller.wait_closed()
        await caller.aclose()
        return caller, session_id

    caller, session_id = run(scenario())

    assert caller.closed == Closed(code=CloseCode.FRAME_TOO_LARGE, reason="", frame=True)
    assert [e["code"] for e in fatal_errors(caller)] == ["frame_too_large"]
    row = VoiceSession.objects.get(pk=session_id)
    assert (row.status, row.end_reason) == (VoiceSession.Status.FAILED, "error")


def test_a_message_over_a_mebibyte_during_the_session_closes_with_1009_and_ends_it(server, key) -> None:
    async def scenario() -> tuple[WsCaller, str]:
        caller, session_id = await started_session(server, key)
        caller.stop_streaming()
        with contextlib.suppress(ConnectionClosed):
            await caller.ws.send(b"\x00" * (MAX_MESSAGE_BYTES + 2))
        await caller.wait_closed()
        await caller.aclose()
        return caller, session_id

    caller, session_id = run(scenario())

    assert caller.closed is not None
    assert (caller.closed.code, caller.closed.frame) == (CloseCode.WS_MESSAGE_TOO_BIG, True)
    assert wait_for_no_live_sessions() == []
    assert VoiceSession.objects.get(pk=session_id).end_reason == "user_left"


def test_sockets_racing_past_the_live_session_limit_are_refused_with_4429(server) -> None:
    org = make_org(name="Busy Clinic")
    account = billing_account_get(organization=org)
    BillingAccount.objects.filter(pk=account.pk).update(max_concurrent_sessions=2)
    key = make_key(org).plaintext

    async def race() -> list[WsCaller]:
        callers = await asyncio.gather(*(WsCaller.open(server.ws_url(key)) for _ in range(5)))
        await asyncio.gather(*(c.ws.send(config_message()) for c in callers))
        for caller in callers:
            await caller.wait_for(lambda: caller.first("session.started") is not None or caller.closed is not None)  # noqa: B023
        for caller in callers:
            with contextlib.suppress(ConnectionClosed):
                await caller.send_json({"type": "end"})
        for caller in callers:
            await caller.wait_closed()
            await caller.aclose()
        return callers

    callers = run(race())

    codes = sorted(c.closed.code for c in callers if c.closed is not None)
    assert codes == [CloseCode.NORMAL] * 2 + [CloseCode.CONCURRENCY_LIMIT] * 3
    for caller in callers:
        if caller.closed is not None and caller.closed.code == CloseCode.CONCURRENCY_LIMIT:
            assert [(e["code"], e["fatal"]) for e in caller.events] == [("concurrency_limit", True)]
    assert wait_for_no_live_sessions() == []


# ------------------------------------------------------------------------------ a handler that raises


class _RaisesOnConfig(VoiceAgentConsumer):
    async def _receive_config(self, text_data: str | None, bytes_data: bytes | None) -> None:
        raise RuntimeError("a bug in the config path")


class _RaisesOnceTheRowExists(VoiceAgentConsumer):
    async def _start_session(
        self, session_id: str, config: contracts.SessionConfig, rate: int, *, organization_id: str
    ) -> None:
        self.session_id = session_id
        raise RuntimeError("a bug between the row and the conversation")


async def talk_in_process(consumer: type[VoiceAgentConsumer], key: str) -> tuple[list[dict[str, Any]], int]:
    """Connect in-process, send a config, return the events and the close code sent."""
    communicator = WebsocketCommunicator(ApiKeyQueryAuthMiddleware(consumer.as_asgi()), f"/ws/voice-agent?key={key}")
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data=config_message())
    events: list[dict[str, Any]] = []
    while True:
        output = await communicator.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            await communicator.disconnect()
            return events, output["code"]
        events.append(json.loads(output["text"]))


@pytest.mark.parametrize("consumer", [_RaisesOnConfig, _RaisesOnceTheRowExists], ids=["no-session", "row-created"])
def test_a_handler_that_raises_still_says_why_and_closes_with_1011(key, consumer) -> None:
    events, code = run(talk_in_process(consumer, key))

    assert code == CloseCode.INTERNAL_ERROR
    assert [(e["type"], e["code"], e["fatal"]) for e in events] == [("error", "internal_error", True)]
    assert list(VoiceSession.objects.filter(status__in=LIVE)) == []
    if consumer is _RaisesOnceTheRowExists:
        [row] = VoiceSession.objects.all()
        assert (row.status, row.end_reason) == (VoiceSession.Status.FAILED, "error")


# ------------------------------------------------------------------------------ the fuzz

FUZZ_SEED = 20261202
FUZZ_SOCKETS = 60
FUZZ_PARALLEL = 6
FUZZ_ORGS = 3
ORG_LIVE_LIMIT = 3  # sessions still ending count too: the concurrency limit is hit at times
RSS_GROWTH_LIMIT = 150 * 1024 * 1024

UNSAFE_CONFIGS = [
    metadata_config('{"a": "\\u0000"}'),
    metadata_config('{"a": "\\ud800"}'),
    metadata_config('{"\\udc00": 1}'),
    metadata_config('{"a": -1e999}'),
    metadata_config('{"a": Infinity}'),
    '{"type": "config", "sample_rate": 1e400}',
    '{"type": "config", "max_duration_seconds": 1e308}',
    '{"type": "config", "system_prompt": "hi\\u0000"}',
    '{"type": "config", "voice": "\\udbff"}',
    '{"type": "config", "\\u0000": 1}',
    '{"type": "config", "max_duration_seconds": ' + "9" * 5000 + "}",
    metadata_config("[" * 40 + "]" * 40),
]
INVALID_CONFIGS = [
    config_message(sample_rate=44100),
    config_message(sample_rate="16000"),
    config_message(voice="nobody", colour="blue"),
    config_message(max_duration_seconds=-5),
    config_message(metadata=[1, 2]),
    config_message(metadata={f"k{n}": n for n in range(40)}),
    config_message(system_prompt=""),
    '{"type": "config", "metadata": {"a": {"b": 1}}}',
]
CONTROL_TYPES: list[Any] = ["end", "config", "hello", None, 1, [], {}, "END", ""]
# Keys as a query string can carry them: NUL, bytes that are not UTF-8, non-ASCII, none at all.
ODD_KEYS = ["cm_%00" + "a" * 30, "cm_%FF%FE" + "a" * 30, "cm_%C3%A9" + "a" * 30, "", "%00&key=cm_x"]


@dataclass
class Outcome:
    script: list[str]
    closed: Closed | None  # None: the client aborted the connection itself
    events: list[dict[str, Any]]


def fuzz_message(rng: random.Random, kind: str = "") -> tuple[str, str | bytes | float | None]:
    """One step of a socket's script: (kind, payload); of a random kind unless told."""
    kind = kind or rng.choices(
        [
            "config", "invalid-config", "unsafe-config", "json", "junk", "huge-text", "deep", "bad-utf8",
            "audio", "odd-audio", "random-binary", "empty-binary", "huge-binary", "end", "pause", "abort", "idle",
        ],
        weights=[6, 4, 5, 5, 3, 2, 3, 1, 8, 2, 3, 2, 1, 5, 4, 2, 1],
    )[0]  # fmt: skip
    if kind == "config":
        return kind, config_message(sample_rate=rng.choice([8000, 16000, 24000]))
    if kind == "invalid-config":
        return kind, rng.choice(INVALID_CONFIGS)
    if kind == "unsafe-config":
        return kind, rng.choice(UNSAFE_CONFIGS)
    if kind == "json":
        return kind, json.dumps(rng.choice([{"type": rng.choice(CONTROL_TYPES)}, [1, "end"], "end", 3.5, None]))
    if kind == "junk":
        chars = [rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0xD7FF)]) for _ in range(rng.randint(0, 300))]
        return kind, "".join(map(chr, chars))
    if kind == "huge-text":
        return kind, "x" * rng.randint(MAX_TEXT_MESSAGE_BYTES + 1, 4 * MAX_TEXT_MESSAGE_BYTES)
    if kind == "deep":
        depth = rng.randint(33, 20000)
        return kind, rng.choice(["[", '{"a":']) * depth + "1" + rng.choice(["]", "}"]) * depth
    if kind == "bad-utf8":
        return kind, b'{"type": "' + rng.randbytes(8) + b'\xff"}'
    if kind == "audio":
        return kind, silence(rng.choice([0.01, 0.02, 0.1]), 16000)
    if kind == "odd-audio":
        return kind, rng.randbytes(rng.randrange(1, 2000, 2))
    if kind == "random-binary":
        return kind, rng.randbytes(rng.randrange(0, 70000, 2))
    if kind == "empty-binary":
        return kind, b""
    if kind == "huge-binary":
        return kind, bytes(rng.randint(MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES + 200_000))
    if kind == "end":
        return kind, json.dumps({"type": "end"})
    if kind == "pause":
        return kind, rng.uniform(0.0, 0.4)
    if kind == "idle":
        return "pause", CONFIG_TIMEOUT_SECONDS + 0.5
    return kind, None  # abort


async def fuzz_socket(server: DaphneServer, key: str, script: list[tuple[str, Any]]) -> Outcome:
    caller = await WsCaller.open(server.ws_url(key))
    kinds = [kind for kind, _ in script]
    try:
        for kind, payload in script:
            if kind == "pause":
                await asyncio.sleep(payload)
            elif kind == "abort":
                caller.ws.transport.abort()
                return Outcome(kinds, None, caller.events)
            else:
                # Sending after the server closed is part of the fuzz; the client library refuses it.
                with contextlib.suppress(ConnectionClosed):
                    await caller.ws.send(payload, text=True if kind == "bad-utf8" else None)
        if caller.closed is None:
            with contextlib.suppress(ConnectionClosed):
                await caller.send_json({"type": "end"})  # ends a session; before one, a protocol error
        await caller.wait_closed(timeout=30)
        return Outcome(kinds, caller.closed, caller.events)
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await caller.aclose()


async def warm_up(server: DaphneServer, key: str) -> None:
    """A few ordinary calls, so the RSS baseline includes the pipeline's imports and caches."""
    for _ in range(3):
        caller, _ = await started_session(server, key)
        await caller.wait_for(lambda: caller.first("agent.stopped") is not None)  # noqa: B023
        await caller.send_json({"type": "end"})
        await caller.wait_closed()
        await caller.aclose()


def rest_status(server: DaphneServer, key: str) -> int:
    request = urllib.request.Request(f"{server.http_url}/v1/catalog/voices", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


@pytest.mark.slow
def test_fuzzing_the_socket_gets_documented_closes_and_leaves_the_server_well(server) -> None:
    rng = random.Random(FUZZ_SEED)
    keys = []
    for n in range(FUZZ_ORGS):
        org = make_org(name=f"Fuzz {n}")
        account = billing_account_get(organization=org)
        BillingAccount.objects.filter(pk=account.pk).update(max_concurrent_sessions=ORG_LIVE_LIMIT)
        keys.append(make_key(org).plaintext)
    scripts = []
    for _ in range(FUZZ_SOCKETS):
        steps = [fuzz_message(rng) for _ in range(rng.randint(1, 8))]
        # Most sockets start with a good config, so the fuzz reaches the running session too.
        scripts.append([fuzz_message(rng, "config"), *steps] if rng.random() < 0.6 else steps)
    assert server.process is not None
    daphne = psutil.Process(server.process.pid)

    async def fuzz() -> list[Outcome]:
        gate = asyncio.Semaphore(FUZZ_PARALLEL)

        async def one(n: int) -> Outcome:
            key = ODD_KEYS[n // 10 % len(ODD_KEYS)] if n % 10 == 9 else keys[n % FUZZ_ORGS]
            async with gate:
                return await fuzz_socket(server, key, scripts[n])

        return await asyncio.gather(*(one(n) for n in range(FUZZ_SOCKETS)))

    run(warm_up(server, keys[0]))
    rss_warm = daphne.memory_info().rss
    started = time.monotonic()
    outcomes = run(fuzz())
    fuzz_seconds = time.monotonic() - started
    leftover = wait_for_no_live_sessions()
    rss_after = daphne.memory_info().rss

    documented = documented_close_codes()
    codes = collections.Counter(o.closed.code if o.closed else "aborted" for o in outcomes)
    print(
        f"\nfuzz: {FUZZ_SOCKETS} sockets in {fuzz_seconds:.1f} s; close codes {dict(sorted(codes.items(), key=str))}; "
        f"Daphne RSS {rss_warm / 2**20:.0f} MiB after warm-up, {rss_after / 2**20:.0f} MiB after the fuzz"
    )
    for outcome in outcomes:
        if outcome.closed is None:
            continue
        context = f"{outcome.script} → {outcome.closed} after {outcome.events}"
        assert outcome.closed.frame, context
        assert outcome.closed.code in documented and outcome.closed.code != CloseCode.INTERNAL_ERROR, context
        if outcome.closed.code >= 4000:
            errors = [e for e in outcome.events if e.get("type") == "error" and e["fatal"]]
            assert errors and errors[-1]["code"] in documented[outcome.closed.code], context
        started_event = next((e for e in outcome.events if e.get("type") == "session.started"), None)
        if started_event is not None and outcome.closed.code not in WS_LAYER:
            assert outcome.events[-1]["type"] == "session.ended", context
    assert codes[CloseCode.NORMAL] > 0 and sum(n for c, n in codes.items() if isinstance(c, int) and c >= 4000) > 0
    assert leftover == []
    assert "Exception inside application" not in server.log()
    assert rest_status(server, keys[0]) == 200
    assert rss_after - rss_warm < RSS_GROWTH_LIMIT
