// The magi1 page: compose a job, watch it run, play each chunk as soon as the server has it.
// Plain DOM code, no build step. Job data is only ever put into the page with textContent, never as HTML.
"use strict";

const POLL_JOB_MS = 700;
const POLL_LIST_MS = 2500;
const ACCEPT = {
  i2v: "image/png,image/jpeg,image/webp,image/bmp",
  v2v: "video/mp4,video/quicktime,video/webm,video/x-matroska,video/x-msvideo,.mkv,.avi",
};

const KEY_STORAGE = "magi1.api_key";
const WATCHING_STORAGE = "magi1.watching";  // the job shown, shown again after a reload
const $ = (id) => document.getElementById(id);
let mode = "t2v";
let limits = null;
let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
let keyRequired = false;

function authHeaders() {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function askForKey(message) {
  const form = $("key-form");
  $("key-message").textContent = message;
  if (!form.hidden) return;
  form.hidden = false;
  $("api-key").focus();
}

function useKey(event) {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  $("key-form").hidden = true;
  refreshInfo();
  refreshList();
}

// A URL the page can put in <video>/<img>: as is without keys; with keys, the bytes fetched with the key
// (a media element cannot send an Authorization header), as a blob: URL.
async function mediaUrl(url) {
  if (!apiKey) return url;
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) throw new Error(`${response.status}`);
  return URL.createObjectURL(await response.blob());
}

// ------------------------------------------------------------------ API
async function api(path, options = {}) {
  const sentKey = apiKey;
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  // (a 401 to a request sent before the key was entered says nothing about the key)
  if (response.status === 401 && sentKey === apiKey) {
    askForKey(apiKey ? "that API key was refused" : "this server needs an API key");
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* an empty or non-JSON body */ }
  if (!response.ok) {
    const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
                 : body && body.error && body.error.message ? body.error.message : response.statusText;
    throw Object.assign(new Error(`${response.status}: ${detail}`), { status: response.status });
  }
  return body;
}

// ------------------------------------------------------------------ model status and defaults
async function refreshInfo() {
  try {
    const health = await api("/health");
    keyRequired = Boolean(health.api_key_required);
    if (keyRequired && !apiKey) {
      $("model-status").textContent = "API key needed";
      askForKey("this server needs an API key");
      return;
    }
    const info = await api("/v1/info");
    limits = info.limits;
    const badge = $("model-status");
    badge.textContent = `model ${info.model}`;
    badge.className = `badge ${info.model}`;
    applyLimits(info.limits, info.defaults);
    $("enhancer-name").textContent = info.enhancer === "fallback" || !info.enhancer
      ? "(the server's templates: camera and quality sentences)" : `(model ${info.enhancer})`;
    if (info.model === "loading") setTimeout(refreshInfo, 2000);
  } catch (err) {
    if (err.status === 401) {  // the server answered: the key was refused; wait for the next one (useKey)
      $("model-status").textContent = "API key refused";
      return;
    }
    $("model-status").textContent = err.status ? `server error ${err.status}` : "server unreachable";
    setTimeout(refreshInfo, 4000);
  }
}

function applyLimits(lim, defaults) {
  const caps = { num_frames: lim.max_frames, height: lim.max_height, width: lim.max_width, steps: lim.max_steps };
  for (const [id, cap] of Object.entries(caps)) $(id).max = cap;
  if (!defaults) return;
  for (const id of SETTING_FIELDS) {
    if (defaults[id] !== undefined && defaults[id] !== null) $(id).placeholder = String(defaults[id]);
  }
}

// ------------------------------------------------------------------ composing
function selectMode(next) {
  mode = next;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  }
  const needsFile = mode !== "t2v";
  $("upload-row").hidden = !needsFile;
  $("keep-aspect-row").hidden = !needsFile;
  $("upload-label").textContent = mode === "i2v" ? "Image" : "Video to continue";
  $("file").accept = ACCEPT[mode] || "";
  $("file").value = "";
  $("form-message").textContent = "";
  showPreview(null);
}

function showPreview(file) {
  const img = $("image-preview");
  const vid = $("video-preview");
  for (const el of [img, vid]) {
    if (el.src.startsWith("blob:")) URL.revokeObjectURL(el.src);
    el.removeAttribute("src");
    el.hidden = true;
  }
  if (!file) return;
  const target = file.type.startsWith("video/") || mode === "v2v" ? vid : img;
  target.src = URL.createObjectURL(file);
  target.hidden = false;
}

// "2: a new prompt" lines -> {"2": "a new prompt"}; throws on a line it cannot read.
function parseChunkPrompts(text) {
  const schedule = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const match = /^(\d+)\s*:\s*(.+)$/.exec(line);
    if (!match) throw new Error(`chunk prompt line "${line.slice(0, 40)}" should look like "2: a new prompt"`);
    schedule[match[1]] = match[2];
  }
  return Object.keys(schedule).length ? schedule : null;
}

const SETTING_FIELDS = ["num_frames", "height", "width", "steps", "seed"];

// A number box's text; "" when empty (the model's default). Text the browser cannot read as a number
// ("1e", "1,5") also reads as "" there, so it is refused here rather than sent as the default.
function settingText(id) {
  const input = $(id);
  if (input.validity.badInput) {
    const label = input.closest("label").firstChild.textContent.trim();
    throw new Error(`${label} is not a number; write digits only, or leave it empty for the model's default`);
  }
  return input.value.trim();
}

function buildForm() {
  const form = new FormData();
  form.append("mode", mode);
  form.append("prompt", $("prompt").value.trim());
  const chunkPrompts = parseChunkPrompts($("chunk-prompts").value);
  if (chunkPrompts) form.append("chunk_prompts", JSON.stringify(chunkPrompts));
  if ($("enhance").checked) form.append("enhance", "true");
  for (const id of SETTING_FIELDS) {
    const value = settingText(id);
    if (value) form.append(id, value);
  }
  if (mode !== "t2v") {
    const file = $("file").files[0];
    if (!file) throw new Error(mode === "i2v" ? "choose an image first" : "choose a video first");
    if (limits && file.size > limits.max_upload_bytes) {
      throw new Error(`the file is ${file.size} bytes; this server accepts up to ${limits.max_upload_bytes}`);
    }
    form.append("file", file);
    form.append("keep_aspect", $("keep_aspect").checked ? "true" : "false");
  }
  return form;
}

async function submitJob(event) {
  event.preventDefault();
  const message = $("form-message");
  message.textContent = "";
  if (!$("prompt").value.trim()) {
    message.textContent = "write a prompt first";
    return;
  }
  $("submit").disabled = true;
  try {
    if ($("live").checked && liveSupported()) {
      submitLive(await liveRequest());
      return;
    }
    await submitQueued();
  } catch (err) {
    message.textContent = err.message;
    $("submit").disabled = false;
  }
}

async function submitQueued() {
  try {
    const job = await api("/v1/jobs", { method: "POST", body: buildForm() });
    watch(job.id);
    refreshList();
  } finally {
    $("submit").disabled = false;
  }
}

// The form as a session.start message (docs: README "Serving", the WebSocket protocol).
async function liveRequest() {
  const request = { prompt: $("prompt").value.trim() };
  const chunkPrompts = parseChunkPrompts($("chunk-prompts").value);
  if (chunkPrompts) request.chunk_prompts = chunkPrompts;
  if ($("enhance").checked) request.enhance = true;
  const number = (id) => (settingText(id) ? Number($(id).value) : null);
  if (number("num_frames") !== null) request.frames = number("num_frames");
  if (number("steps") !== null) request.num_inference_steps = number("steps");
  if (number("seed") !== null) request.seed = number("seed");
  const width = number("width") ?? (Number($("width").placeholder) || null);
  const height = number("height") ?? (Number($("height").placeholder) || null);
  if ((number("width") !== null || number("height") !== null) && width && height) request.size = `${width}x${height}`;
  if (mode !== "t2v") {
    const file = $("file").files[0];
    if (!file) throw new Error(mode === "i2v" ? "choose an image first" : "choose a video first");
    request[mode === "i2v" ? "image" : "video"] = await dataUrl(file);
    request.keep_aspect = $("keep_aspect").checked;
  }
  return request;
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

let liveSession = null;

function submitLive(request) {
  const events = $("live-events");
  events.textContent = "";
  liveSession = startLive(request, apiKey, {
    video: $("player"),
    onStart: (start) => {
      watch(start.job_id, { live: true });
      $("live-form").hidden = false;
      $("submit").disabled = false;
      refreshList();
    },
    onChunk: (meta) => {
      // chunk indices from 0, as in the chunk prompts box and the "from chunk N on" of a prompt change
      events.textContent = `${meta.chunk + 1}/${meta.num_chunks} chunks streamed · chunk ${meta.chunk}: `
        + `"${meta.caption ? meta.caption.prompt : ""}"`;
    },
    onEvent: (text) => { $("live-status").textContent = text; },
    onDone: (done) => {
      $("live-form").hidden = true;
      events.textContent = `${done.status}: ${done.chunks} chunk(s) streamed`;
      refreshList();
    },
    onFail: (text, early) => {
      $("live-form").hidden = true;
      $("submit").disabled = false;
      if (early) {
        // No live session started (e.g. a pipeline that cannot stream): the queued job API instead.
        submitQueued().catch((err) => { $("form-message").textContent = err.message; });
      } else {
        events.textContent = text;
      }
    },
  });
}

function changePromptNow(event) {
  event.preventDefault();
  const prompt = $("live-prompt").value.trim();
  if (!liveSession || !prompt) return;
  liveSession.changePrompt(prompt, Number($("live-transition").value) || 0);
  $("live-status").textContent = "sending…";
}

// ------------------------------------------------------------------ watching one job
// The player walks a playlist: one short mp4 per finished chunk, then the whole video once the job is done.
const watcher = { id: null, state: null, timer: null, playlist: [], next: 0, finished: false, fullVideo: null, idle: true };

function watch(jobId, { live = false } = {}) {
  clearTimeout(watcher.timer);
  Object.assign(watcher, { id: jobId, state: null, playlist: [], next: 0, finished: false, fullVideo: null, idle: true,
                           live });
  const player = $("player");
  delete player.dataset.src;
  if (!live) {  // a live job's player is fed by the stream (live.js)
    if (liveSession && !liveSession.done) liveSession.socket.close();
    player.removeAttribute("src");
    player.load();
  }
  sessionStorage.setItem(WATCHING_STORAGE, jobId);
  $("job-label").textContent = jobId.slice(0, 8);
  $("download").hidden = true;
  showEnhanced(null);
  pollJob();
}

// Nothing shown: the player emptied, so an `ended` cannot walk on into a deleted job's chunks.
function stopWatching() {
  clearTimeout(watcher.timer);
  Object.assign(watcher, { id: null, state: null, playlist: [], next: 0, finished: false, fullVideo: null, idle: true,
                           live: false });
  sessionStorage.removeItem(WATCHING_STORAGE);
  const player = $("player");
  delete player.dataset.src;
  player.removeAttribute("src");
  player.load();
  $("job-label").textContent = "nothing yet";
  $("progress-text").textContent = "";
  $("progress").value = 0;
  $("step-preview").hidden = true;
  $("cancel").hidden = true;
  $("download").hidden = true;
  showEnhanced(null);
}

async function pollJob() {
  const id = watcher.id;
  let job;
  try {
    job = await api(`/v1/jobs/${id}`);
  } catch (err) {
    if (id === watcher.id) $("progress-text").textContent = err.message;
    return;
  }
  if (id !== watcher.id) return;  // the user switched to another job meanwhile
  if (job.state !== watcher.state) {
    watcher.state = job.state;
    refreshList();  // keep the job list in step with what the player shows
  }
  showProgress(job);
  for (const url of job.urls.chunks.slice(watcher.playlist.length)) watcher.playlist.push(url);
  const finished = ["done", "failed", "cancelled"].includes(job.state);
  if (finished) {
    watcher.finished = true;
    watcher.fullVideo = job.urls.video;
    if (job.urls.video) {
      const link = $("download");
      link.href = `${job.urls.video}?download=1`;
      link.dataset.url = job.urls.video;
      link.hidden = false;
    }
  } else {
    watcher.timer = setTimeout(pollJob, POLL_JOB_MS);
  }
  if (watcher.idle) playNext();
}

function showProgress(job) {
  $("progress").value = job.progress;
  const parts = [job.state];
  if (job.state === "queued" && job.queue_position) parts.push(`position ${job.queue_position}`);
  if (job.num_chunks) parts.push(`${job.chunks_ready}/${job.num_chunks} chunks`);
  if (job.state === "running" && job.total_steps) parts.push(`step ${job.step}/${job.total_steps}`);
  parts.push(`${Math.round(job.progress * 100)}%`);
  if (job.error) parts.push(job.error);
  $("progress-text").textContent = parts.join(" · ");
  showStepPreview(job);
  showEnhanced(job.enhanced);
  $("cancel").hidden = ["done", "failed", "cancelled"].includes(job.state) || job.cancel_requested;
}

// The captions the server's enhancer made (job.enhanced), which the video was made from.
function showEnhanced(enhanced) {
  $("enhanced-box").hidden = !enhanced;
  if (!enhanced) return;
  $("enhanced-by").textContent = enhanced.enhancer === "fallback" ? "(templates)" : `(model ${enhanced.enhancer})`;
  $("enhanced-prompt").textContent = enhanced.prompt;
  const list = $("enhanced-chunks");
  const chunks = Object.entries(enhanced.chunk_prompts || {}).sort((a, b) => Number(a[0]) - Number(b[0]));
  list.hidden = chunks.length === 0;
  list.replaceChildren(...chunks.map(([chunk, caption]) => {
    const item = document.createElement("li");
    item.textContent = `from chunk ${chunk}: ${caption}`;
    return item;
  }));
}

// While chunks are denoised, a cheap latent preview of the window (no VAE decode) shows what is coming.
function showStepPreview(job) {
  const preview = $("step-preview");
  if (job.state !== "running" || !job.step || !job.urls.preview) {
    preview.hidden = true;
    return;
  }
  const src = `${job.urls.preview}?step=${job.step}`;
  if (preview.dataset.src === src) return;
  preview.dataset.src = src;
  preview.onload = () => { preview.hidden = false; };
  preview.onerror = () => { preview.hidden = true; };  // none yet (404): try again at the next poll
  mediaUrl(src).then((url) => { preview.src = url; }, () => { preview.hidden = true; });
}

async function playNext() {
  const player = $("player");
  if (watcher.live) {
    watcher.idle = true;  // the stream feeds the player
  } else if (watcher.next < watcher.playlist.length) {
    watcher.idle = false;
    const id = watcher.id;
    const url = watcher.playlist[watcher.next++];
    const src = await mediaUrl(url).catch(() => null);
    if (id !== watcher.id) return;
    if (src === null) return playNext();
    player.src = src;
    player.play().catch(() => { /* autoplay refused: the controls are there */ });
  } else if (watcher.finished && watcher.fullVideo && player.dataset.src !== watcher.fullVideo) {
    // Every chunk has played: leave the whole video in the player, ready to replay.
    watcher.idle = false;
    player.dataset.src = watcher.fullVideo;
    const src = await mediaUrl(watcher.fullVideo).catch(() => null);
    if (src !== null) player.src = src;
    if (watcher.playlist.length === 0) player.play().catch(() => {});
  } else {
    watcher.idle = true;  // waiting for the next chunk
  }
}

// ------------------------------------------------------------------ the job list
async function refreshList() {
  try {
    const data = await api("/v1/jobs");
    renderJobs(data.data);
    resumeWatching(data.data);
    $("queue-status").textContent = `${data.running ? "1 running" : "idle"}, ${data.queued}/${data.max_queue} queued`;
  } catch (_) { /* the status badge already says the server is unreachable */ }
}

// After a reload: show again the job this tab was showing, if the server still has it.
function resumeWatching(jobs) {
  const last = sessionStorage.getItem(WATCHING_STORAGE);
  if (watcher.id || !last) return;
  if (jobs.some((job) => job.id === last)) watch(last);
  else sessionStorage.removeItem(WATCHING_STORAGE);
}

function renderJobs(jobs) {
  const body = $("jobs");
  body.replaceChildren();
  $("no-jobs").hidden = jobs.length > 0;
  for (const job of jobs) {
    const row = document.createElement("tr");
    const cell = (text, cls) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      row.appendChild(td);
      return td;
    };
    cell(`${job.id.slice(0, 8)} ${new Date(job.created_at * 1000).toLocaleTimeString()}`);
    cell(job.mode);
    const shown = job.prompt || (job.enhanced && job.enhanced.prompt) || "";  // a story's job has no prompt
    cell(shown, "prompt").title = job.enhanced ? `enhanced: ${job.enhanced.prompt}` : shown;
    const active = job.state === "queued" || job.state === "running";
    cell(active ? `${job.state} ${Math.round(job.progress * 100)}%` : job.state, `state ${job.state}`).title = job.error || "";
    const actions = cell("");
    actions.appendChild(button("Show", () => showJob(job.id)));
    if (active && !job.cancel_requested) actions.appendChild(button("Cancel", () => cancelJob(job.id)));
    actions.appendChild(button("Delete", () => deleteJob(job.id)));
    body.appendChild(row);
  }
}

// The player shows one job: leaving a live stream for another closes its WebSocket, and the server cancels a
// live video whose viewer has gone, so ask first.
function showJob(id) {
  const streaming = liveSession && !liveSession.done && !liveSession.failed;
  if (streaming && id === watcher.id) return;  // it is the one on screen
  if (streaming && !confirm("Showing another job ends the live video being streamed: the server cancels it "
                            + "and keeps only its finished chunks. Show the other job?")) return;
  watch(id);
}

function button(label, onClick) {
  const el = document.createElement("button");
  el.type = "button";
  el.textContent = label;
  el.addEventListener("click", onClick);
  return el;
}

async function cancelJob(id) {
  try { await api(`/v1/jobs/${id}/cancel`, { method: "POST" }); } catch (err) { $("form-message").textContent = err.message; }
  refreshList();
}

async function deleteJob(id) {
  try { await api(`/v1/jobs/${id}`, { method: "DELETE" }); } catch (err) { $("form-message").textContent = err.message; }
  if (id === watcher.id) stopWatching();
  refreshList();
}

// With a key, a plain link cannot carry it: fetch the mp4 with the key and save it from a blob: URL.
async function downloadWithKey(event) {
  const link = $("download");
  if (!apiKey || link.href.startsWith("blob:")) return;
  event.preventDefault();
  try {
    const url = await mediaUrl(link.dataset.url);
    const save = document.createElement("a");
    save.href = url;
    save.download = `magi1-${watcher.id.slice(0, 12)}.mp4`;
    save.click();
  } catch (err) {
    $("form-message").textContent = `download failed: ${err.message}`;
  }
}

function listLoop() {
  refreshList().finally(() => setTimeout(listLoop, POLL_LIST_MS));
}

// ------------------------------------------------------------------ start
document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => selectMode(tab.dataset.mode));
  $("file").addEventListener("change", () => {
    $("form-message").textContent = "";  // a refusal of the file before no longer says anything true
    showPreview($("file").files[0] || null);
  });
  $("job-form").addEventListener("submit", submitJob);
  $("cancel").addEventListener("click", () => watcher.id && cancelJob(watcher.id));
  $("key-form").addEventListener("submit", useKey);
  $("live-form").addEventListener("submit", changePromptNow);
  $("download").addEventListener("click", downloadWithKey);
  if (!liveSupported()) $("live-row").hidden = true;
  const player = $("player");
  player.addEventListener("ended", playNext);
  player.addEventListener("error", playNext);  // a chunk that will not play should not stall the rest
  player.addEventListener("playing", () => { player.dataset.played = "true"; });
  selectMode("t2v");
  refreshInfo();
  listLoop();
});
