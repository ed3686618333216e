"use strict";
// The playground (/dashboard/playground/): talk to the agent as the logged-in user.
//
// WebSocket mode: mint a single-use ticket (session cookie + CSRF token; the page never holds an
// API key), open /ws/voice-agent?ticket=…, send the config, then the microphone as 16 kHz s16le
// PCM in 20 ms frames from an AudioWorklet; play the agent's PCM back to back with Web Audio and
// drop whatever is still queued the moment the server says the caller interrupted it.
// LiveKit mode: create the session through the dashboard and join its room with livekit-client,
// exactly as the product page's snippet does.
//
// The page reports what it did on #playground's data- attributes (state, session id, samples of
// agent audio played and flushed, interruptions) so tests and curious users can read them.
(() => {
  const root = document.getElementById("playground");
  if (!root) {
    return;
  }
  const form = document.getElementById("playground-config");
  const talkButton = document.getElementById("pg-talk");
  const hangupButton = document.getElementById("pg-hangup");
  const statusLine = document.getElementById("pg-status");
  const transcript = document.getElementById("pg-transcript");
  const selects = {
    voice: document.getElementById("pg-voice"),
    language: document.getElementById("pg-language"),
    llm_model: document.getElementById("pg-model"),
  };
  const sampleRate = Number(root.dataset.sampleRate);

  let call = null; // the live call: {hangUp()}

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function setState(state) {
    root.dataset.state = state;
    const busy = state === "connecting" || state === "live";
    talkButton.disabled = busy;
    hangupButton.disabled = !busy;
    for (const control of form.querySelectorAll("select, textarea, input[name=mode]")) {
      control.disabled = busy;
    }
  }

  // ------------------------------------------------------------------ catalog and config

  function option(value, label, { selected = false, disabled = false } = {}) {
    const element = document.createElement("option");
    element.value = value;
    element.textContent = label;
    element.selected = selected;
    element.disabled = disabled;
    return element;
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) {
      throw new Error(`${url} answered ${response.status}`);
    }
    return response.json();
  }

  async function loadCatalog() {
    const [voices, languages, models] = await Promise.all([
      getJson("/v1/catalog/voices"),
      getJson("/v1/catalog/languages"),
      getJson("/v1/catalog/models"),
    ]);
    for (const voice of voices) {
      const label = voice.gender ? `${voice.id} (${voice.gender})` : voice.id;
      selects.voice.append(option(voice.id, label, { selected: voice.default }));
    }
    for (const language of languages.filter((l) => l.tts)) {
      const label = `${language.name} (${language.code})`;
      selects.language.append(option(language.code, label, { selected: language.code === "en-IN" }));
    }
    for (const model of models) {
      const label = model.status === "available" ? model.id : `${model.id} — ${model.status}`;
      selects.llm_model.append(
        option(model.id, label, { selected: model.default, disabled: model.status !== "available" }),
      );
    }
  }

  function sessionConfig() {
    const config = {
      voice: selects.voice.value,
      language: selects.language.value,
      llm_model: selects.llm_model.value,
    };
    const prompt = form.elements.system_prompt.value.trim();
    if (prompt) {
      config.system_prompt = prompt;
    }
    return config;
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": form.elements.csrfmiddlewaretoken.value,
      },
      body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = data.error || {};
      const fields = Object.entries(error.fields || {}).map(([name, messages]) => `${name}: ${messages[0]}`);
      throw new Error(fields.length ? fields.join("; ") : error.message || `HTTP ${response.status}`);
    }
    return data;
  }

  // ------------------------------------------------------------------ transcript

  const interim = { user: null, agent: null };

  function transcriptLine(role, text, final) {
    let line = interim[role];
    if (!line) {
      line = document.createElement("li");
      line.className = role;
      line.dataset.role = role;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "user" ? "You" : "Agent";
      line.append(who, document.createElement("p"));
      transcript.append(line);
    }
    line.querySelector("p").textContent = text;
    line.classList.toggle("interim", !final);
    line.dataset.final = String(final);
    interim[role] = final ? null : line;
    line.scrollIntoView({ block: "nearest" });
    return line;
  }

  // ------------------------------------------------------------------ agent audio

  // Plays s16le PCM chunks back to back. Every chunk is its own AudioBufferSourceNode scheduled
  // right after the previous one, so flush() can stop all of them at once.
  class Player {
    constructor(context, rate) {
      this.context = context;
      this.rate = rate;
      this.queued = new Set();
      this.nextTime = 0;
      this.played = 0;
      this.flushed = 0;
    }

    play(arrayBuffer) {
      const pcm = new Int16Array(arrayBuffer);
      if (pcm.length === 0) {
        return;
      }
      const buffer = this.context.createBuffer(1, pcm.length, this.rate);
      const samples = buffer.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) {
        samples[i] = pcm[i] / 0x8000;
      }
      const source = this.context.createBufferSource();
      source.buffer = buffer;
      source.connect(this.context.destination);
      // A small cushion when starting from silence absorbs the network's jitter.
      const start = Math.max(this.nextTime, this.context.currentTime + 0.05);
      source.start(start);
      this.nextTime = start + buffer.duration;
      const entry = { source, start, samples: pcm.length };
      this.queued.add(entry);
      source.onended = () => {
        if (this.queued.delete(entry)) {
          this.played += entry.samples;
          this.report();
        }
      };
      this.report();
    }

    // Barge-in: stop what is sounding and drop everything queued behind it, now.
    flush() {
      const now = this.context.currentTime;
      for (const entry of this.queued) {
        const heard = Math.min(entry.samples, Math.max(0, Math.round((now - entry.start) * this.rate)));
        this.played += heard;
        this.flushed += entry.samples - heard;
        entry.source.onended = null;
        entry.source.stop();
        entry.source.disconnect();
      }
      this.queued.clear();
      this.nextTime = 0;
      this.report();
    }

    report() {
      root.dataset.playedSamples = String(this.played);
      root.dataset.flushedSamples = String(this.flushed);
      root.dataset.playing = String(this.queued.size > 0);
    }
  }

  // ------------------------------------------------------------------ WebSocket mode

  async function startCapture(context, onFrame) {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    await context.audioWorklet.addModule(root.dataset.workletUrl);
    const source = context.createMediaStreamSource(stream);
    const capture = new AudioWorkletNode(context, "pcm-capture", {
      processorOptions: { targetRate: sampleRate },
    });
    capture.port.onmessage = (event) => onFrame(event.data);
    // The worklet must be pulled by the graph to run; its output is silent and muted anyway.
    const mute = context.createGain();
    mute.gain.value = 0;
    source.connect(capture).connect(mute).connect(context.destination);
    return () => {
      capture.port.onmessage = null;
      source.disconnect();
      capture.disconnect();
      for (const track of stream.getTracks()) {
        track.stop();
      }
    };
  }

  const CLOSE_REASONS = {
    4001: "not signed in",
    4002: "the ticket was refused",
    4402: "insufficient balance or spend cap reached",
    4429: "too many live sessions",
    4503: "no capacity right now, try again shortly",
  };

  async function talkOverWebSocket() {
    const context = new AudioContext();
    await context.resume();
    const player = new Player(context, sampleRate);
    let socket = null;
    let lastError = "";
    let ended = null;
    let replyCut = false;
    // The microphone is opened first, so a refused permission costs no ticket; what it hears
    // before the socket is open is not sent (the agent was not listening yet).
    let stopCapture = () => {};
    let minted;
    try {
      stopCapture = await startCapture(context, (frame) => {
        if (socket && socket.readyState === WebSocket.OPEN) {
          socket.send(frame);
        }
      });
      minted = await postJson(root.dataset.ticketUrl, {});
    } catch (error) {
      stopCapture();
      context.close();
      throw error;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${minted.ws_path}?ticket=${encodeURIComponent(minted.ticket)}`;
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    call = {
      hangUp() {
        if (socket.readyState === WebSocket.OPEN) {
          socket.send(JSON.stringify({ type: "end" })); // the server ends the session and closes
        } else {
          socket.close();
        }
      },
    };

    socket.onopen = () => {
      socket.send(JSON.stringify({ type: "config", sample_rate: sampleRate, ...sessionConfig() }));
    };

    socket.onmessage = (message) => {
      if (typeof message.data !== "string") {
        player.play(message.data);
        return;
      }
      const event = JSON.parse(message.data);
      switch (event.type) {
        case "session.started":
          root.dataset.sessionId = event.session_id;
          setState("live");
          setStatus(`Live: session ${event.session_id.slice(0, 8)} (${event.providers}). Speak now.`);
          break;
        case "transcript":
          if (event.text.trim()) {
            const line = transcriptLine(event.role, event.text, event.final);
            if (event.role === "agent" && event.final && replyCut) {
              line.classList.add("cut"); // the server cut the line to what was played
              replyCut = false;
            }
          }
          break;
        case "agent.speaking":
          setStatus("The agent is speaking…");
          break;
        case "agent.stopped":
          setStatus("Listening…");
          break;
        case "interrupted":
          player.flush();
          root.dataset.interruptions = String(Number(root.dataset.interruptions) + 1);
          replyCut = true; // the reply's final line follows
          break;
        case "error":
          lastError = event.message;
          if (!event.fatal) {
            setStatus(`Warning: ${event.message}`);
          }
          break;
        case "session.ended":
          ended = event;
          break;
        default:
          break;
      }
    };

    socket.onclose = (close) => {
      stopCapture();
      call = null;
      setState("ended");
      if (ended) {
        const seconds = Number(ended.duration_seconds || 0).toFixed(1);
        setStatus(`Session ended (${ended.reason}) after ${seconds} s.${lastError ? ` ${lastError}` : ""}`);
        const link = document.createElement("a");
        link.href = `/dashboard/sessions/${ended.session_id}/`;
        link.textContent = "Open the session";
        statusLine.append(" ", link);
      } else {
        const why = lastError || CLOSE_REASONS[close.code] || `the connection closed (${close.code})`;
        setStatus(`Could not talk: ${why}.`);
      }
      // Let the agent's last words finish before the context goes.
      const tail = Math.max(0, player.nextTime - context.currentTime);
      setTimeout(() => context.close(), tail * 1000 + 100);
    };
  }

  // ------------------------------------------------------------------ LiveKit mode

  async function talkOverLiveKit() {
    const session = await postJson(root.dataset.sessionUrl, sessionConfig());
    root.dataset.sessionId = session.id;
    const { Room, RoomEvent, Track } = window.LivekitClient;
    const room = new Room();
    room.on(RoomEvent.TrackSubscribed, (track, pub, participant) => {
      if (track.kind === Track.Kind.Audio) {
        const el = track.attach();
        document.body.appendChild(el);
      }
    });
    room.on(RoomEvent.TranscriptionReceived, (segments, participant) => {
      for (const seg of segments) {
        if (seg.final) {
          transcriptLine(participant?.isLocal ? "user" : "agent", seg.text, true);
        }
      }
    });
    room.on(RoomEvent.Disconnected, () => {
      call = null;
      setState("ended");
      setStatus(`Left the room of session ${session.id.slice(0, 8)}.`);
    });
    call = { hangUp: () => room.disconnect() };
    await room.connect(session.ws_url, session.token);
    await room.localParticipant.setMicrophoneEnabled(true);
    setState("live");
    setStatus(`Live in session ${session.id.slice(0, 8)}'s LiveKit room. Speak now.`);
  }

  // ------------------------------------------------------------------ wiring

  talkButton.addEventListener("click", async () => {
    transcript.replaceChildren();
    interim.user = null;
    interim.agent = null;
    root.dataset.sessionId = "";
    setState("connecting");
    setStatus("Connecting…");
    const mode = form.elements.mode.value || "websocket";
    try {
      await (mode === "livekit" ? talkOverLiveKit() : talkOverWebSocket());
    } catch (error) {
      call = null;
      setState("ended");
      setStatus(`Could not talk: ${error.message}`);
    }
  });

  hangupButton.addEventListener("click", () => {
    if (call) {
      call.hangUp();
    }
  });

  loadCatalog().then(
    () => {
      setState("idle");
      setStatus("Choose a voice, language and model, then press Talk.");
    },
    (error) => setStatus(`Could not load the catalog: ${error.message}`),
  );
})();
