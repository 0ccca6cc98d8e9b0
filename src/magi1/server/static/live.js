// The live stream of the page: one video made over WS /v1/realtime/video, played with Media Source
// Extensions as its chunks arrive (one fMP4 fragment each, the first with the init segment), and a
// "change prompt now" box that sends session.interaction while it is being made.
// Loaded before app.js, which calls startLive() and reads liveSupported().
"use strict";

const LIVE_PROTOCOL = "magi1.realtime.v1";

function liveSupported() {
  return typeof window.MediaSource === "function" && typeof window.WebSocket === "function";
}

// Appends fragments to one SourceBuffer in order (appendBuffer takes one at a time).
class FragmentPlayer {
  constructor(video) {
    this.video = video;
    this.source = new MediaSource();
    this.buffer = null;
    this.queue = [];
    this.ended = false;
    this.opened = new Promise((resolve) => this.source.addEventListener("sourceopen", resolve, { once: true }));
    video.removeAttribute("src");
    video.src = URL.createObjectURL(this.source);
  }

  async append(mimeType, bytes) {
    await this.opened;
    if (!this.buffer) {
      this.buffer = this.source.addSourceBuffer(mimeType);
      this.buffer.mode = "segments";  // each fragment carries its own decode time (tfdt)
      this.buffer.addEventListener("updateend", () => this.pump());
    }
    this.queue.push(bytes);
    this.pump();
  }

  pump() {
    if (!this.buffer || this.buffer.updating) return;
    if (this.queue.length) {
      this.buffer.appendBuffer(this.queue.shift());
      if (this.video.paused) this.video.play().catch(() => { /* autoplay refused: the controls are there */ });
    } else if (this.ended && this.source.readyState === "open") {
      this.source.endOfStream();
    }
  }

  finish() {
    this.ended = true;
    this.pump();
  }
}

// One live session. hooks: onStart(msg), onChunk(meta), onEvent(text), onDone(msg), onFail(message, early).
function startLive(request, key, hooks) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = [LIVE_PROTOCOL];
  if (key) protocols.push(`bearer.${key}`);  // browsers cannot send an Authorization header on a WebSocket
  const socket = new WebSocket(`${scheme}//${location.host}/v1/realtime/video`, protocols);
  socket.binaryType = "arraybuffer";
  const session = { socket, started: false, done: false, player: null, pendingMeta: null, chunks: 0 };

  socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "session.start", ...request })));
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") {
      const meta = session.pendingMeta;
      session.pendingMeta = null;
      if (!meta) return;
      if (!session.player) session.player = new FragmentPlayer(hooks.video);
      session.player.append(meta.mime_type, event.data);
      session.chunks += 1;
      hooks.onChunk(meta);
      return;
    }
    const message = JSON.parse(event.data);
    switch (message.type) {
      case "video.start":
        session.started = true;
        hooks.onStart(message);
        break;
      case "video.chunk_metadata":
        session.pendingMeta = message;  // its fragment is the next (binary) message
        break;
      case "session.interaction.accepted":
        hooks.onEvent(`prompt change accepted; it applies from the next chunk not yet started`);
        break;
      case "session.interaction.applied":
        hooks.onEvent(`"${message.prompt}" from chunk ${message.first_chunk} on`);
        break;
      case "session.interaction.dropped":
        hooks.onEvent("a prompt change came too late: every chunk had already started");
        break;
      case "session.done":
        session.done = true;
        if (session.player) session.player.finish();
        hooks.onDone(message);
        break;
      case "error":
        session.failed = true;
        hooks.onFail(message.error.message, !session.started);
        break;
    }
  });
  socket.addEventListener("close", (event) => {
    if (!session.done && !session.failed) {
      session.failed = true;
      hooks.onFail(event.reason || "the live stream closed", !session.started);
    }
  });
  session.changePrompt = (prompt, transitionChunks) => socket.send(JSON.stringify(
    { type: "session.interaction", prompt, transition_chunks: transitionChunks }));
  session.stop = () => socket.send(JSON.stringify({ type: "session.stop" }));
  return session;
}
