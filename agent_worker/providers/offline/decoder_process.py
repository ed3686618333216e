"""A pocketsphinx decoder in its own process, driven over stdin/stdout.

pocketsphinx's Python binding holds the GIL for as long as it decodes (bench/README.md,
``offline_speech``, has how long), so a worker thread is not enough to keep the conversation's
audio flowing: the event loop stalls with it. A child process decodes on another core with no
lock in common, and pipes cost nothing at 32 KB/s of audio.

Run as a script (``python -P decoder_process.py``), so the child imports only the standard
library and pocketsphinx — not this package, livekit or anything else the parent has loaded
(``-P``: this directory's ``stt.py`` and friends must not shadow anything the child imports). The parent
side imports the protocol helpers below.

Protocol, all little-endian: a request is one op byte, a uint32 payload length and the payload
(16 kHz s16le mono PCM for ``BEGIN`` / ``FEED`` / ``TRANSCRIBE``); ``FINISH`` and ``TRANSCRIBE``
are answered with a uint32 length and the UTF-8 transcript. The child writes ``READY`` once its
model is loaded, and exits when its stdin closes.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import IO

BEGIN = b"B"  # start an utterance with this audio
FEED = b"F"  # more audio of the current utterance
FINISH = b"E"  # end the utterance; answered with its transcript
TRANSCRIBE = b"T"  # a whole utterance at once; answered with its transcript
RESET = b"R"  # drop any utterance in progress
READY = b"\x01"

_REQUEST = struct.Struct("<cI")
_REPLY = struct.Struct("<I")
SAMPLE_RATE = 16000


def write_request(stream: IO[bytes], op: bytes, payload: bytes = b"") -> None:
    stream.write(_REQUEST.pack(op, len(payload)) + payload)
    stream.flush()


def read_reply(stream: IO[bytes]) -> str:
    (length,) = _REPLY.unpack(_read_exactly(stream, _REPLY.size))
    return _read_exactly(stream, length).decode("utf-8")


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError("the decoder process closed its pipe")
        data += chunk
    return data


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    from pocketsphinx import Config, Decoder

    decoder = Decoder(Config(samprate=SAMPLE_RATE, loglevel="FATAL"))
    in_utterance = False

    def end() -> str:
        nonlocal in_utterance
        if not in_utterance:
            return ""
        decoder.end_utt()
        in_utterance = False
        hyp = decoder.hyp()
        return str(hyp.hypstr).strip() if hyp is not None else ""

    def reply(text: str) -> None:
        body = text.encode("utf-8")
        replies.write(_REPLY.pack(len(body)) + body)
        replies.flush()

    replies.write(READY)
    replies.flush()
    while True:
        try:
            op, length = _REQUEST.unpack(_read_exactly(requests, _REQUEST.size))
            payload = _read_exactly(requests, length)
        except EOFError:
            return  # the parent is gone or done with us
        if op in (BEGIN, TRANSCRIBE, RESET):
            end()
        if op in (BEGIN, TRANSCRIBE):
            decoder.start_utt()
            in_utterance = True
        if payload and in_utterance:  # pocketsphinx rejects an empty buffer
            decoder.process_raw(payload, False, op == TRANSCRIBE)
        if op in (FINISH, TRANSCRIBE):
            reply(end())


def main() -> None:
    # Replies get a private copy of stdout, and fd 1 becomes stderr: anything the C library
    # prints cannot corrupt the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
