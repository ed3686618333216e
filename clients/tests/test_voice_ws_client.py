"""The CLI's audio conversion: any WAV becomes mono s16le at the socket's rate."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from clients.voice_ws_client import config_from, parse_args, read_wav_as_pcm, resample, to_mono_float


def write(path: Path, samples: np.ndarray, *, rate: int, width: int, channels: int) -> Path:
    """``samples``: float in [-1, 1], shape (n, channels)."""
    if width == 1:
        raw = (samples * 127 + 128).round().astype(np.uint8).tobytes()
    elif width == 2:
        raw = (samples * 32767).round().astype("<i2").tobytes()
    elif width == 3:
        ints = (samples * (2**23 - 1)).round().astype("<i4")
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints.reshape(-1))
    else:
        raw = (samples * (2**31 - 1)).round().astype("<i4").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(raw)
    return path


def sine(rate: int, seconds: float, frequency: float = 300.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency * np.arange(round(rate * seconds)) / rate)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (8000, 1), (48000, 1), (16000, 2)])
def test_any_wav_becomes_mono_s16le_at_the_target_rate(tmp_path, width, rate, channels) -> None:
    wave_ = sine(rate, 0.5)
    stereo = np.stack([wave_, wave_ * 0.0 if channels == 2 else wave_], axis=1)[:, :channels]
    path = write(tmp_path / "in.wav", stereo, rate=rate, width=width, channels=channels)

    pcm = read_wav_as_pcm(path, sample_rate=16000)

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    assert len(samples) == pytest.approx(8000, abs=2)
    expected = sine(16000, 0.5) * (0.5 if channels == 2 else 1.0)  # the silent channel halves it
    # Compare away from the edges, where the smoothing window reaches past the file.
    middle = slice(200, 7800)
    assert np.max(np.abs(samples[middle] - expected[: len(samples)][middle])) < 0.03


def test_mono_mixing_and_sample_formats() -> None:
    raw = np.array([[16384, -16384], [32767, 32767]], dtype="<i2").tobytes()
    assert to_mono_float(raw, sample_width=2, channels=2).tolist() == pytest.approx([0.0, 32767 / 32768])
    assert to_mono_float(bytes([0, 128, 255]), sample_width=1, channels=1).tolist() == pytest.approx(
        [-1.0, 0.0, 127 / 128]
    )
    assert to_mono_float((-(2**23)).to_bytes(3, "little", signed=True), sample_width=3, channels=1)[0] == -1.0
    with pytest.raises(ValueError, match="sample width"):
        to_mono_float(b"\x00" * 5, sample_width=5, channels=1)


def test_resample_keeps_duration() -> None:
    assert len(resample(np.zeros(44100), from_rate=44100, to_rate=8000)) == 8000
    assert len(resample(np.zeros(8000), from_rate=8000, to_rate=24000)) == 24000


def test_config_carries_only_what_was_given(tmp_path) -> None:
    path = write(tmp_path / "a.wav", np.zeros((10, 1)), rate=16000, width=2, channels=1)
    args = parse_args(["--key", "cm_x", "--wav", str(path), "--voice", "kavya", "--metadata", '{"t": 1}'])
    assert config_from(args) == {"type": "config", "sample_rate": 16000, "voice": "kavya", "metadata": {"t": 1}}
    with pytest.raises(SystemExit):
        parse_args(["--key", "cm_x", "--wav", str(path), "--sample-rate", "44100"])


def test_one_audio_source_exactly(tmp_path) -> None:
    path = write(tmp_path / "a.wav", np.zeros((10, 1)), rate=16000, width=2, channels=1)
    assert parse_args(["--key", "cm_x", "--say", "hello"]).say == "hello"
    for sources in ([], ["--say", "hi", "--wav", str(path)], ["--mic", "--say", "hi"]):
        with pytest.raises(SystemExit):
            parse_args(["--key", "cm_x", *sources])
