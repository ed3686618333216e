"""Where streamed LLM text may be cut for a TTS: both TTS clients speak whole sentences as soon as
they are complete, so the first audio starts after the first sentence, not the whole reply."""

from __future__ import annotations

import re

# Latin and Devanagari sentence ends (danda, double danda), with closing quotes or brackets.
SENTENCE_END = re.compile(r"[.!?;:।॥]+[\"'”’)\]]*\s+")
SOFT_CHUNK_CHARS = 150  # a sentence this long is cut at a space rather than waited for


def take_ready_text(buffer: str) -> tuple[str, str]:
    """Split buffered text into what is ready to speak now and the rest to wait for."""
    last_end = 0
    for match in SENTENCE_END.finditer(buffer):
        last_end = match.end()
    if last_end:
        return buffer[:last_end], buffer[last_end:]
    if len(buffer) >= SOFT_CHUNK_CHARS:
        cut = buffer.rfind(" ")
        if cut > 0:
            return buffer[: cut + 1], buffer[cut + 1 :]
    return "", buffer
