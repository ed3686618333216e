"use strict";
// The playground's microphone tap, run on the audio thread (an AudioWorklet module, loaded from
// our own origin under script-src 'self'). It turns the context's float samples (usually 48 kHz)
// into the legacy socket's format — signed 16-bit little-endian mono at `targetRate` — and posts
// 20 ms frames to the page, which sends each as one binary message: real time by construction.
class PcmCaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.targetRate = options.processorOptions.targetRate;
    // Input samples per output sample (3 from 48 kHz to 16 kHz). Each output sample is the mean of
    // the inputs it spans: a box filter, enough to keep aliasing out of speech recognition.
    this.step = sampleRate / this.targetRate;
    this.frameSamples = Math.round(this.targetRate / 50);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sum = 0;
    this.count = 0;
    this.position = 0;
  }

  emit(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === this.frameSamples) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(this.frameSamples);
      this.filled = 0;
    }
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        this.sum += channel[i];
        this.count += 1;
        this.position += 1;
        if (this.position >= this.step) {
          this.position -= this.step;
          this.emit(this.sum / this.count);
          this.sum = 0;
          this.count = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCaptureProcessor);
