// The therapy session page, built on sdk.js. The access token comes from the URL fragment
// (#token=...), which the browser never sends to a server; it is then kept in this tab's
// sessionStorage (a reload keeps working) and removed from the address bar.
//
// Optional fragment parameters: video=WIDTHxHEIGHT@FPS (capture size, e.g. 320x240@15 on a
// weak device), simulcast=0.

import { Session, preCallCheck, inboundVideoStats } from "./sdk.js";

const $ = (id) => document.getElementById(id);

const LEVELS = {
  excellent: { label: "Excellent", text: "As good as this kind of call gets: clear voice without delay, a smooth and sharp picture.", advice: "Nothing to do." },
  good: { label: "Good", text: "Usable, with something you may notice: an occasional clipped syllable, a slightly late reply, a softer picture.", advice: "If something important was said during a glitch, check that it was heard." },
  poor: { label: "Poor", text: "The connection is affecting the conversation: words drop out, replies come late, the picture freezes.", advice: "Say so and slow down. Turning video off, moving nearer the router or closing other apps may help." },
  lost: { label: "Lost", text: "Nothing has arrived for two seconds or more.", advice: "Wait a few seconds; if it does not come back, leave and join again." },
};

// stream_state reasons (adaptation): short chip text, and what it means.
const PAUSED = {
  bandwidth: ["video paused", "Video paused: not enough bandwidth on your connection for it"],
  audio_only: ["audio only", "You chose to receive audio only"],
  preference: ["video paused", "Video paused for this tile's size"],
};

const QUALITY_SETTLE_MS = 6000;

const REASONS = {
  left: "You left the session.",
  room_ended: "The host ended the session.",
  removed_by_host: "The host removed you from the session.",
  removed_by_admin: "You were removed from the session.",
  replaced: "You joined from another window or device.",
  session_time_limit: "The session reached its time limit.",
  denied: "The host did not let you in.",
  disconnected: "The connection to the server was lost.",
};

function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem("mediaserver.token", token);
    params.delete("token");
    const rest = params.toString();
    sessionStorage.setItem("mediaserver.options", rest);
    history.replaceState(null, "", location.pathname + location.search);
  }
  const options = new URLSearchParams(token ? params.toString() : sessionStorage.getItem("mediaserver.options") ?? location.hash.slice(1));
  return { token: token ?? sessionStorage.getItem("mediaserver.token"), options };
}

function videoConstraints(spec) {
  const m = /^(\d+)x(\d+)(?:@(\d+))?$/.exec(spec ?? "");
  if (!m) return { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 24 } };
  return { width: { ideal: +m[1] }, height: { ideal: +m[2] }, frameRate: { ideal: +(m[3] ?? 24) } };
}

let toastTimer;
function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), 5000);
}

function show(section) {
  for (const id of ["precall", "waiting", "call", "ended"]) $(id).hidden = id !== section;
}

/** A yes/no question in the shared dialog; resolves true for the confirm button. */
function ask(title, text, confirmLabel) {
  const dlg = $("ask");
  $("ask-title").textContent = title;
  $("ask-text").textContent = text;
  $("ask-yes").textContent = confirmLabel;
  return new Promise((resolve) => {
    const done = (value) => {
      $("ask-yes").onclick = $("ask-no").onclick = null;
      dlg.onclose = null;
      if (dlg.open) dlg.close();
      resolve(value);
    };
    $("ask-yes").onclick = () => done(true);
    $("ask-no").onclick = () => done(false);
    dlg.onclose = () => done(false); // Escape
    dlg.showModal();
    $("ask-no").focus();
  });
}

class SessionPage {
  constructor(token, options) {
    this.options = options;
    this.session = new Session({ token, simulcast: options.get("simulcast") !== "0" });
    this.stream = null;
    this.tiles = new Map(); // participant_id -> {fig, video, audio, caption}
    // Milliseconds since navigation start, for measuring: pre-call check done, Join
    // clicked, first remote video frame presented.
    this.precallDoneAt = this.joinClickedAt = this.firstRemoteFrameAt = null;
    this.consentGiven = false;
    this.bind();
  }

  bind() {
    const s = this.session;
    s.on("state", ({ state, reason }) => this.onState(state, reason));
    s.on("participant_joined", ({ participant }) => {
      this.tile(participant.participant_id);
      this.renderPeople();
      toast(`${participant.name || "Someone"} joined.`);
    });
    s.on("participant_left", ({ participant_id }) => {
      this.tiles.get(participant_id)?.fig.remove();
      this.tiles.delete(participant_id);
      this.renderPeople();
      this.layout();
    });
    s.on("participant_waiting", ({ participant }) => {
      this.renderPeople();
      toast(`${participant.name || "Someone"} is in the waiting room.`);
    });
    s.on("waiting_left", () => this.renderPeople());
    s.on("admitted", () => this.enterCall());
    s.on("denied", ({ reason }) => (this.deniedReason = reason));
    s.on("track_subscribed", (remote) => this.showRemote(remote));
    s.on("track_unsubscribed", (remote) => {
      const t = this.tiles.get(remote.participant_id);
      if (t && remote.kind === "video") t.fig.classList.add("novideo");
    });
    for (const type of ["track_muted", "track_unmuted", "track_published"]) s.on(type, () => this.refreshCaptions());
    s.on("track_muted", (msg) => {
      if (msg.participant_id === s.participantId && msg.by !== s.participantId) {
        toast("The host muted your microphone.");
        this.syncButtons();
      }
    });
    s.on("unmute_requested", async () => {
      if (await ask("Unmute?", "The host asks you to turn your microphone back on.", "Unmute")) this.setMic(false);
    });
    s.on("speakers_changed", () => this.layout());
    s.on("connection_quality", () => {
      this.refreshCaptions();
      this.renderBadge();
    });
    s.on("room_updated", ({ locked }) => {
      $("lock").setAttribute("aria-pressed", String(locked));
      $("lock").textContent = locked ? "Unlock the room" : "Lock the room";
      toast(locked ? "The room is locked." : "The room is open.");
    });
    s.on("recording_state", () => this.renderRecording());
    s.on("consent_request", ({ by }) => this.askConsent(by));
    s.on("stream_state", () => this.refreshCaptions());
    s.on("reconnecting", () => ($("status").textContent = "Reconnecting…"));
    s.on("reconnected", () => {
      $("status").textContent = "";
      this.renderAll();
      toast("Reconnected.");
    });
    s.on("rejoined", () => this.renderAll());
    s.on("error", (msg) => toast(`Problem: ${msg.message}`));

    $("join").onclick = () => this.join();
    $("leave-waiting").onclick = () => s.leave();
    $("leave").onclick = () => s.leave();
    $("mic").onclick = () => this.setMic(!this.localMuted("audio"));
    $("cam").onclick = () => this.setCam(!this.localMuted("video"));
    $("host-toggle").onclick = () => this.showHostPanel($("host").hidden);
    $("host-close").onclick = () => this.showHostPanel(false);
    $("lock").onclick = () => s.lockRoom(!s.room?.locked).catch((e) => toast(e.message));
    $("record").onclick = () => {
      const active = ["waiting_consent", "recording", "paused"].includes(s.recording?.state);
      (active ? s.recordStop() : s.recordStart()).catch((e) => toast(e.message));
    };
    $("end").onclick = async () => {
      if (await ask("End the session?", "Everyone will be disconnected.", "End for everyone")) s.endRoom().catch((e) => toast(e.message));
    };
    $("withdraw").onclick = () => s.withdrawConsent().then(() => (this.consentGiven = false), (e) => toast(e.message));
    $("consent-yes").onclick = () => this.answerConsent(true);
    $("consent-no").onclick = () => this.answerConsent(false);
    $("consent").addEventListener("cancel", (ev) => ev.preventDefault()); // an answer is needed
    $("quality").onclick = () => this.toggleQuality();
  }

  // ---- before joining ------------------------------------------------------------------

  async precall() {
    show("precall");
    const video = videoConstraints(this.options.get("video"));
    const onStream = (stream) => {
      // Joining needs only the camera and microphone; the other checks go on meanwhile.
      this.stream = stream;
      if (stream) $("preview").srcObject = stream;
      $("join").disabled = false;
      if (!document.activeElement || document.activeElement === document.body) $("join").focus();
    };
    const onResult = (name, r) => {
      const li = document.querySelector(`[data-check="${name}"]`);
      li.dataset.status = r.status;
      li.querySelector("span:last-child").textContent = r.detail;
    };
    const result = await preCallCheck({ video, audio: { echoCancellation: true, noiseSuppression: true }, onStream, onResult });
    if (this.session.state === "idle") {
      $("precall-note").textContent = result.ok ? "" : "Something is wrong (see above). You can still try to join.";
    }
    this.precallResult = result;
    this.precallDoneAt = performance.now();
  }

  async join() {
    this.joinClickedAt = performance.now();
    $("join").disabled = true;
    try {
      const joined = await this.session.connect();
      $("title").textContent = "Session";
      document.title = "Session";
      if (joined.state === "waiting") show("waiting");
      else await this.enterCall();
    } catch (err) {
      $("precall-note").textContent = `Could not join: ${err.message}`;
      $("join").disabled = false;
    }
  }

  async enterCall() {
    const s = this.session;
    show("call");
    $("host-toggle").hidden = !s.can("admit");
    $("quality").hidden = false;
    this.tile(s.participantId, true);
    for (const id of s.participants.keys()) this.tile(id);
    this.renderAll();
    if (s.can("publish") && this.stream && !s.localTracks.size) {
      try {
        await s.publish(this.stream);
      } catch (err) {
        toast(`Could not send your camera and microphone: ${err.message}`);
      }
    }
    this.syncButtons();
    $("main").focus();
  }

  onState(state, reason) {
    if (state === "closed") {
      let text = REASONS[reason] ?? "";
      if (reason === "denied" && this.deniedReason) text = sentence(this.deniedReason);
      $("ended-reason").textContent = text;
      show("ended");
      $("host").hidden = $("quality").hidden = $("withdraw").hidden = true;
      $("quality-details").hidden = true;
      for (const d of document.querySelectorAll("dialog[open]")) d.close();
      for (const t of this.stream?.getTracks() ?? []) t.stop();
    }
  }

  // ---- tiles and layout ------------------------------------------------------------------

  tile(pid, self = false) {
    let t = this.tiles.get(pid);
    if (t) return t;
    const fig = document.createElement("figure");
    fig.className = "tile novideo";
    fig.dataset.participant = pid;
    const video = document.createElement("video");
    video.autoplay = video.playsInline = video.muted = true;
    const audio = document.createElement("audio");
    audio.autoplay = true;
    const caption = document.createElement("figcaption");
    fig.append(video, audio, caption);
    if (self) {
      fig.classList.add("self");
      video.srcObject = this.stream;
      fig.classList.toggle("novideo", !this.stream?.getVideoTracks().length);
    }
    $("grid").append(fig);
    t = { fig, video, audio, caption, self, since: performance.now() };
    this.tiles.set(pid, t);
    this.refreshCaptions();
    this.layout();
    return t;
  }

  showRemote(remote) {
    const t = this.tile(remote.participant_id);
    if (remote.kind === "audio") {
      this.session.attach(remote.track_id, t.audio);
      return;
    }
    this.session.attach(remote.track_id, t.video);
    t.fig.classList.remove("novideo");
    t.videoTrackId = remote.track_id;
    const first = () => {
      if (this.firstRemoteFrameAt === null) this.firstRemoteFrameAt = performance.now();
    };
    if (t.video.requestVideoFrameCallback) t.video.requestVideoFrameCallback(first);
    else t.video.addEventListener("loadeddata", first, { once: true });
  }

  refreshCaptions() {
    const s = this.session;
    for (const [pid, t] of this.tiles) {
      const p = t.self ? { name: "You", role: this.myRole(), tracks: new Map() } : s.participants.get(pid);
      if (!p) continue;
      const tracks = t.self ? [...s.localTracks.values()] : [...p.tracks.values()];
      const audioMuted = tracks.some((x) => x.kind === "audio" && x.muted);
      const q = this.settled(t) ? s.quality.get(pid) : null;
      const stream = t.videoTrackId ? s.remoteTracks.get(t.videoTrackId)?.streamState : null;
      const paused = stream?.state === "paused" && stream.reason !== "disabled";
      const parts = [t.self ? "You" : p.name || p.identity];
      if (p.role === "host") parts.push("host");
      t.caption.textContent = "";
      const name = document.createElement("span");
      name.textContent = parts.join(" · ");
      t.caption.append(name);
      if (audioMuted) t.caption.append(chip("muted", "Microphone muted"));
      if (paused) t.caption.append(chip(PAUSED[stream.reason]?.[0] ?? "video paused", PAUSED[stream.reason]?.[1] ?? "Video paused by the server"));
      if (q) t.caption.append(chip(q.level, `Connection ${q.level}`, `q-${q.level}`));
      t.fig.setAttribute("aria-label", `${parts.join(", ")}${audioMuted ? ", microphone muted" : ""}${q ? `, connection ${q.level}` : ""}`);
    }
  }

  /**
   * Connection levels are shown once a tile's media has had a few seconds: the server's first
   * windows of a starting video track (a few frames a second) read poor for a moment, and a
   * badge saying "poor" for every newcomer would teach people to ignore it.
   */
  settled(tile) {
    const ready = performance.now() - tile.since >= QUALITY_SETTLE_MS;
    if (!ready && !tile.settleTimer) {
      tile.settleTimer = setTimeout(() => {
        this.refreshCaptions();
        this.renderBadge();
      }, QUALITY_SETTLE_MS);
    }
    return ready;
  }

  myRole() {
    return this.session.can("admit") ? "host" : "participant";
  }

  layout() {
    const dominant = this.session.dominantSpeaker;
    const remote = [...this.tiles.values()].filter((t) => !t.self).length;
    for (const [pid, t] of this.tiles) {
      const isDominant = pid === dominant && !t.self && remote > 1;
      t.fig.classList.toggle("dominant", isDominant);
      t.fig.classList.toggle("speaking", pid === dominant);
    }
    $("grid").dataset.count = String(this.tiles.size);
  }

  renderAll() {
    for (const pid of this.session.participants.keys()) this.tile(pid);
    for (const [pid, t] of [...this.tiles]) {
      if (!t.self && !this.session.participants.has(pid)) {
        t.fig.remove();
        this.tiles.delete(pid);
      }
    }
    this.refreshCaptions();
    this.renderPeople();
    this.renderRecording();
    this.renderBadge();
    this.layout();
    this.syncButtons();
  }

  // ---- own media ------------------------------------------------------------------------

  localMuted(kind) {
    return this.session.localTrackOf(kind)?.muted ?? false;
  }

  async setMic(muted) {
    const t = this.session.localTrackOf("audio");
    if (t) await this.session.setMuted(t.track_id, muted).catch((e) => toast(e.message));
    this.syncButtons();
    this.refreshCaptions();
  }

  async setCam(off) {
    const t = this.session.localTrackOf("video");
    if (t) await this.session.setMuted(t.track_id, off).catch((e) => toast(e.message));
    this.tiles.get(this.session.participantId)?.fig.classList.toggle("novideo", off);
    this.syncButtons();
  }

  syncButtons() {
    const mic = this.localMuted("audio");
    const cam = this.localMuted("video");
    $("mic").setAttribute("aria-pressed", String(mic));
    $("mic").textContent = mic ? "Unmute microphone" : "Mute microphone";
    $("cam").setAttribute("aria-pressed", String(cam));
    $("cam").textContent = cam ? "Turn camera on" : "Turn camera off";
    const canPublish = this.session.can("publish");
    $("mic").hidden = $("cam").hidden = !canPublish;
  }

  // ---- host panel -----------------------------------------------------------------------

  showHostPanel(open) {
    $("host").hidden = !open;
    $("host-toggle").setAttribute("aria-expanded", String(open));
    if (open) $("host-title").focus();
    else $("host-toggle").focus();
  }

  renderPeople() {
    const s = this.session;
    const wl = $("waiting-list");
    wl.textContent = "";
    for (const w of s.waiting.values()) {
      const li = person(w.name || w.identity);
      li.append(button("Admit", `Admit ${w.name || w.identity}`, () => s.admit(w.participant_id).catch((e) => toast(e.message))));
      li.append(button("Deny", `Turn away ${w.name || w.identity}`, () => s.deny(w.participant_id).catch((e) => toast(e.message))));
      wl.append(li);
    }
    if (!s.waiting.size) wl.append(person("Nobody is waiting."));
    const pl = $("people");
    pl.textContent = "";
    for (const p of s.participants.values()) {
      const label = p.name || p.identity;
      const li = person(`${label}${p.role === "participant" ? "" : ` (${p.role})`}`);
      if (p.role !== "observer") li.append(button("Mute", `Mute ${label}`, () => s.muteParticipant(p.participant_id, { muted: true }).catch((e) => toast(e.message))));
      li.append(button("Remove", `Remove ${label} from the session`, async () => {
        if (await ask(`Remove ${label}?`, "They will not be able to come back with the same link.", "Remove")) s.removeParticipant(p.participant_id).catch((e) => toast(e.message));
      }));
      pl.append(li);
    }
    if (!s.participants.size) pl.append(person("Nobody else is here yet."));
    $("host-toggle").textContent = s.waiting.size ? `Host controls (${s.waiting.size} waiting)` : "Host controls";
  }

  // ---- recording and consent -------------------------------------------------------------

  renderRecording() {
    const r = this.session.recording;
    const rec = $("rec");
    const state = r?.state ?? "idle";
    rec.hidden = !["recording", "paused", "waiting_consent"].includes(state);
    rec.dataset.state = state;
    rec.textContent = { recording: "● Recording", paused: "Recording paused", waiting_consent: "Asking to record" }[state] ?? "";
    $("withdraw").hidden = !(this.consentGiven && ["recording", "paused", "waiting_consent"].includes(state));
    const active = ["waiting_consent", "recording", "paused"].includes(state);
    $("record").textContent = active ? "Stop recording" : "Ask to record";
    $("record").hidden = !this.session.can("record");
  }

  askConsent(by) {
    const who = this.session.participants.get(by);
    $("consent-text").textContent = `${who?.name || "The host"} asks to record this session.`;
    const dlg = $("consent");
    if (!dlg.open) dlg.showModal();
    $("consent-yes").focus();
  }

  async answerConsent(granted) {
    $("consent").close();
    try {
      await this.session.consent(granted);
      this.consentGiven = granted;
    } catch (err) {
      toast(err.message);
    }
    this.renderRecording();
  }

  // ---- connection quality ------------------------------------------------------------------

  renderBadge() {
    const own = this.tiles.get(this.session.participantId);
    const q = own && this.settled(own) ? this.session.quality.get(this.session.participantId) : null;
    const badge = $("quality");
    const level = q?.level ?? "excellent";
    badge.dataset.level = q ? level : "unknown";
    badge.textContent = q ? `Connection: ${LEVELS[level].label.toLowerCase()}` : "Connection: measuring";
    badge.setAttribute("aria-label", q ? `Connection ${level}. Show why` : "Connection quality. Show details");
    // Refresh an open explanation, unless the keyboard is in it (it would lose its place).
    const panel = $("quality-details");
    if (!panel.hidden && !panel.contains(document.activeElement)) this.explainQuality();
  }

  toggleQuality() {
    const panel = $("quality-details");
    const open = panel.hidden;
    panel.hidden = !open;
    $("quality").setAttribute("aria-expanded", String(open));
    if (open) this.explainQuality();
  }

  async explainQuality() {
    const s = this.session;
    const panel = $("quality-details");
    let stats;
    try {
      stats = await s.getStats();
    } catch {
      stats = null;
    }
    panel.textContent = "";
    const level = stats?.level ?? s.quality.get(s.participantId)?.level ?? "excellent";
    const info = LEVELS[level] ?? LEVELS.excellent;
    const h = document.createElement("h2");
    h.textContent = `Your connection: ${info.label}${stats?.score != null ? ` (${stats.score.toFixed(1)} of 4.5)` : ""}`;
    panel.append(h, para(info.text), para(`What to do: ${info.advice}`));
    const worst = stats ? worstTrack(stats.tracks) : null;
    if (worst) {
      const [key, t] = worst;
      const dir = key.endsWith(":uplink") ? "what you send" : "what you receive";
      const rtt = t.rtt != null ? `, round trip ${Math.round(t.rtt * 1000)} ms` : "";
      panel.append(para(`Weakest part: ${t.kind} in ${dir}: ${(t.loss * 100).toFixed(1)} % of packets lost${rtt}, jitter ${Math.round((t.jitter ?? 0) * 1000)} ms.`));
      if (t.loss > 0.05) panel.append(para(key.endsWith(":uplink") ? "Your own connection is losing data: a wired connection or being nearer the router helps." : "Data is lost on the way to you: other apps using the network, or a weak Wi-Fi signal, are likely causes."));
    }
    const audioOnly = document.createElement("button");
    audioOnly.type = "button";
    audioOnly.textContent = this.audioOnly ? "Receive video again" : "Receive audio only";
    audioOnly.setAttribute("aria-pressed", String(!!this.audioOnly));
    audioOnly.onclick = () => {
      const next = !this.audioOnly;
      s.setAudioOnly(next).then(() => {
        this.audioOnly = next;
        toast(next ? "Receiving audio only." : "Receiving video again.");
        this.explainQuality();
      }, (e) => toast(`Not available: ${e.message}`));
    };
    panel.append(audioOnly);
    const others = [...s.quality.entries()].filter(([pid]) => pid !== s.participantId && s.participants.has(pid));
    if (others.length) {
      const ul = document.createElement("ul");
      for (const [pid, q] of others) {
        const li = document.createElement("li");
        const p = s.participants.get(pid);
        li.textContent = `${p.name || p.identity}: ${q.level}${q.level === "poor" || q.level === "lost" ? " (their connection)" : ""}`;
        ul.append(li);
      }
      panel.append(para("Others:"), ul);
    }
  }
}

function sentence(text) {
  const t = text.trim();
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

function worstTrack(tracks) {
  let worst = null;
  for (const entry of Object.entries(tracks ?? {})) {
    if (entry[1].muted) continue;
    if (!worst || entry[1].score < worst[1].score) worst = entry;
  }
  return worst;
}

function para(text) {
  const p = document.createElement("p");
  p.textContent = text;
  return p;
}

function chip(text, label, cls = "") {
  const c = document.createElement("span");
  c.className = `chip ${cls}`;
  c.textContent = text;
  c.title = label;
  return c;
}

function person(text) {
  const li = document.createElement("li");
  const span = document.createElement("span");
  span.textContent = text;
  li.append(span);
  return li;
}

function button(text, label, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.onclick = onclick;
  return b;
}

const { token, options } = readFragment();
if (!token) {
  show("ended");
  $("ended-title").textContent = "This page needs a session link";
  $("ended-reason").textContent = "Open the link your therapist's app gave you (it ends in #token=…).";
} else {
  const page = new SessionPage(token, options);
  // For tests and debugging in the console; holds nothing the page's own scripts cannot read.
  window.sessionPage = page;
  window.inboundVideoStats = inboundVideoStats;
  page.precall();
}
