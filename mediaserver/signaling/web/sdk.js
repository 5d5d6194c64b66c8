// mediaserver JavaScript client SDK: signalling protocol v1 (docs/protocol.md) over one
// WebSocket, a publisher RTCPeerConnection the client offers and a subscriber connection the
// server offers. An ES module with no dependencies and no build step:
//
//   import { Session, preCallCheck } from "/web/sdk.js";
//   const session = new Session({ token });
//   session.on("track_subscribed", ({ track, mediaStreamTrack }) => ...);
//   await session.connect();
//   await session.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
//
// Every server event is emitted under its protocol `type` with the message as payload
// (participant_joined, speakers_changed, consent_request, ...). The SDK adds its own events:
// state, track_subscribed, track_unsubscribed, local_track_published, reconnecting,
// reconnected, rejoined, disconnected. The token is never logged or put into a URL.

/** Protocol version this SDK speaks. */
export const PROTOCOL_VERSION = 1;

/**
 * Simulcast layers, lowest first: the rids and their order are what the server expects.
 * @type {ReadonlyArray<{rid: string, scaleResolutionDownBy: number, maxBitrate: number}>}
 */
export const SIMULCAST_LAYERS = Object.freeze([
  Object.freeze({ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000 }),
  Object.freeze({ rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000 }),
  Object.freeze({ rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1200000 }),
]);

const REQUEST_TIMEOUT_MS = 20000;
const PING_INTERVAL_MS = 15000;
const PREFERENCES_DEBOUNCE_MS = 250;
// Below this capture size (longer side) video is published without simulcast: Chrome would
// send only the lowest layers of a small camera (q alone, 80x60, for 320x240).
const SIMULCAST_MIN_SIDE = 640;
const MEDIA_RECOVERY_MS = 5000; // a connection disconnected this long is replaced
const MAX_REDIRECTS = 3;

/**
 * @typedef {Object} TrackInfo  A published track, as the server describes it (Track object).
 * @property {string} track_id
 * @property {string} participant_id
 * @property {"audio"|"video"} kind
 * @property {"camera"|"microphone"|"screen"|"screen_audio"} source
 * @property {string} codec
 * @property {boolean} muted
 * @property {string} [mid]
 */

/**
 * @typedef {Object} ParticipantInfo  Participant object of the protocol.
 * @property {string} participant_id
 * @property {string} identity
 * @property {string} name
 * @property {"host"|"participant"|"observer"} role
 * @property {TrackInfo[]} [tracks]
 */

/**
 * @typedef {Object} RemoteTrack  A track this client receives.
 * @property {string} track_id
 * @property {string} participant_id
 * @property {"audio"|"video"} kind
 * @property {MediaStreamTrack} mediaStreamTrack
 * @property {MediaStream} stream  A stream holding only this track, for an element's srcObject.
 * @property {{state: string, reason?: string|null, spatial?: number|null, temporal?: number|null, width?: number|null, height?: number|null}|null} streamState
 *   The server's last `stream_state` for this track (adaptation): paused or active, and why.
 */

/**
 * @typedef {Object} LocalTrack  A track this client publishes.
 * @property {string} track_id
 * @property {"audio"|"video"} kind
 * @property {string} source
 * @property {MediaStreamTrack} mediaStreamTrack
 * @property {RTCRtpTransceiver} transceiver
 * @property {boolean} muted
 * @property {boolean} simulcast  Whether the server accepted the simulcast layers.
 */

/**
 * @typedef {Object} SessionOptions
 * @property {string} token  Access token from the app's backend.
 * @property {string} [url]  Signalling URL; default ws(s)://<this page's host>/v1/signal.
 * @property {boolean} [autoSubscribe=true]  Receive every track you may see.
 * @property {boolean} [simulcast=true]  Publish video in three layers (q, h, f).
 * @property {boolean} [autoResume=true]  Resume (or rejoin) after the socket drops.
 * @property {number} [resumeWindowMs=30000]  How long to keep trying to resume.
 * @property {number|"auto"|null} [startBitrate="auto"]  What this device's downlink carries
 *   at the start, bit/s (`set_bandwidth` start_bitrate): on a link too thin for video the
 *   server starts with audio only instead of flooding it. "auto": the browser's own estimate
 *   (`navigator.connection`) when it reports a weak link; null: never send one.
 * @property {(msg: string) => void} [log]  Debug log sink; never receives tokens or SDP.
 */

/** An `error` reply from the server, or a local failure with the same shape. */
export class SessionError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "SessionError";
    /** Stable error code (docs/protocol.md, "Error codes"). */
    this.code = code;
  }
}

function bigEnough(track) {
  const { width = 0, height = 0 } = track.getSettings?.() ?? {};
  return Math.max(width, height) >= SIMULCAST_MIN_SIDE;
}

/** Minimal event emitter: on() returns a function that removes the listener. */
export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /** @param {string} type @param {(payload: any) => void} fn @returns {() => void} */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  /** @param {string} type @param {Function} fn */
  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  /** @param {string} type @param {(payload: any) => boolean} [predicate] @returns {Promise<any>} */
  once(type, predicate = () => true) {
    return new Promise((resolve) => {
      const off = this.on(type, (payload) => {
        if (predicate(payload)) {
          off();
          resolve(payload);
        }
      });
    });
  }

  /** @param {string} type @param {any} payload */
  emit(type, payload) {
    for (const fn of [...(this._listeners.get(type) ?? [])]) {
      try {
        fn(payload);
      } catch (err) {
        console.error(`listener for ${type} failed`, err);
      }
    }
  }
}

/** The default signalling URL: the same host as the page. */
export function defaultSignalUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/v1/signal`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * One participant's session: join, publish, receive, host controls, consent, resume.
 *
 * States: "idle" → "connecting" → "waiting" (waiting room) | "active" → "reconnecting" →
 * "active" … → "closed". Emits `state` with {state, reason}.
 */
export class Session extends Emitter {
  /** @param {SessionOptions} options */
  constructor(options) {
    super();
    if (!options || !options.token) throw new TypeError("Session needs a token");
    this._token = options.token;
    this.url = options.url ?? defaultSignalUrl();
    this.autoSubscribe = options.autoSubscribe ?? true;
    this.simulcast = options.simulcast ?? true;
    this.autoResume = options.autoResume ?? true;
    this.resumeWindowMs = options.resumeWindowMs ?? 30000;
    this.startBitrate = options.startBitrate === undefined ? "auto" : options.startBitrate;
    this._log = options.log ?? ((m) => console.debug(`[sdk] ${m}`));
    /** @type {string} */
    this.state = "idle";
    /** @type {string|null} */
    this.participantId = null;
    /** @type {any} */
    this.room = null;
    /** @type {string[]} */
    this.permissions = [];
    /** @type {Map<string, ParticipantInfo & {tracks: Map<string, TrackInfo>}>} */
    this.participants = new Map();
    /** @type {Map<string, ParticipantInfo>} hosts only: the waiting room */
    this.waiting = new Map();
    /** @type {Map<string, LocalTrack>} */
    this.localTracks = new Map();
    /** @type {Map<string, RemoteTrack>} */
    this.remoteTracks = new Map();
    /** @type {any} latest recording_state */
    this.recording = null;
    /** @type {Map<string, {level: string, score: number}>} */
    this.quality = new Map();
    /** @type {string|null} */
    this.dominantSpeaker = null;
    this.iceServers = [];
    this._resumeToken = null;
    /** @type {WebSocket|null} */
    this._ws = null;
    this._nextId = 1;
    /** @type {Map<any, {resolve: Function, reject: Function, timer: any}>} */
    this._pending = new Map();
    /** @type {RTCPeerConnection|null} */
    this.publisher = null;
    /** @type {RTCPeerConnection|null} */
    this.subscriber = null;
    this._subMids = new Map(); // mid -> TrackInfo, from every subscriber_offer of this pc
    this._subChain = Promise.resolve();
    this._pubChain = Promise.resolve();
    this._pubCandidates = null; // queued until publish_answer, then sent as they come
    this._subCandidates = null;
    this._pingTimer = null;
    this._leaving = false;
    this._resuming = false;
    this._prefs = new Map(); // track_id -> last sent preferences (JSON)
    this._attachments = new Map(); // track_id -> {element, detach}
    this._pageHidden = typeof document !== "undefined" && document.visibilityState === "hidden";
    this._onVisibility = () => {
      this._pageHidden = document.visibilityState === "hidden";
      for (const id of this._attachments.keys()) this._schedulePreferences(id);
    };
  }

  // ---- connection ------------------------------------------------------------------------

  /**
   * Open the socket and join. Resolves with the `joined` reply (state "active" or "waiting").
   * @returns {Promise<any>}
   */
  async connect() {
    if (this.state !== "idle" && this.state !== "closed") throw new SessionError("already_joined", "connect() called twice");
    this._leaving = false;
    this._setState("connecting");
    try {
      const joined = await this._firstMessage({ type: "join", token: this._token, protocol: PROTOCOL_VERSION, auto_subscribe: this.autoSubscribe });
      this.iceServers = joined.ice_servers ?? [];
      this._applyRoster(joined);
      this._setState(joined.state === "waiting" ? "waiting" : "active");
      if (joined.state !== "waiting") this._sendStartBitrate();
      this.emit("joined", joined);
      this._startPing();
      if (typeof document !== "undefined") document.addEventListener("visibilitychange", this._onVisibility);
      return joined;
    } catch (err) {
      this._closeSocket();
      this._setState("closed", err.code ?? "connect_failed");
      throw err;
    }
  }

  /**
   * Open a socket and send `join` or `resume`, following `redirect` replies (a cluster: the
   * room lives on another node) to the node named in them.
   */
  async _firstMessage(msg) {
    for (let redirects = 0; ; redirects++) {
      await this._open();
      const reply = await this.request(msg);
      if (reply.type !== "redirect") return reply;
      if (redirects >= MAX_REDIRECTS) throw new SessionError("too_many_redirects", "redirected too many times");
      this._log(`redirected to node ${reply.node_id ?? "?"}`);
      this._closeSocket();
      this.url = reply.url;
    }
  }

  /**
   * `resumed` with `restored: true` (a cluster moved the room to another node): same
   * participant, but no media. Publish the same tracks anew on a new connection (they get new
   * ids) and receive on the new subscriber connection the server offers.
   */
  async _restoreMedia() {
    const local = [...this.localTracks.values()];
    this.publisher?.close();
    this.publisher = null;
    this.localTracks.clear();
    if (local.length && this.can("publish")) {
      await this.publish(local.map((t) => ({ track: t.mediaStreamTrack, source: t.source, muted: t.muted, simulcast: t.simulcast })));
    }
    this.emit("restored", {});
  }

  /** @returns {Promise<void>} */
  _open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      const failed = () => reject(new SessionError("connect_failed", "signalling socket did not open"));
      this._ws = ws;
      ws.onopen = () => resolve();
      ws.onerror = failed;
      ws.onmessage = (ev) => this._onMessage(ws, ev.data);
      ws.onclose = (ev) => {
        failed(); // no effect once open
        this._onSocketClose(ws, ev);
      };
    });
  }

  _closeSocket() {
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  }

  /**
   * Send a request and wait for its reply; rejects with SessionError on an `error` reply.
   * @param {Record<string, any>} msg @param {number} [timeoutMs] @returns {Promise<any>}
   */
  request(msg, timeoutMs = REQUEST_TIMEOUT_MS) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SessionError("timeout", `no reply to ${msg.type}`));
      }, timeoutMs);
      this._pending.set(id, { resolve, reject, timer });
      if (!this._send({ ...msg, id })) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new SessionError("not_connected", `cannot send ${msg.type}: socket closed`));
      }
    });
  }

  /** @param {Record<string, any>} msg @returns {boolean} */
  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(msg));
    return true;
  }

  _startPing() {
    clearInterval(this._pingTimer);
    // The server closes a socket on which no protocol message arrived for a minute.
    this._pingTimer = setInterval(() => this._send({ type: "ping", timestamp: Date.now() / 1000 }), PING_INTERVAL_MS);
  }

  /** @param {WebSocket} ws @param {string} data */
  _onMessage(ws, data) {
    if (ws !== this._ws) return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._log("unparseable message from the server");
      return;
    }
    this.emit("message", msg);
    const waiter = msg.id !== undefined ? this._pending.get(msg.id) : undefined;
    if (waiter) {
      this._pending.delete(msg.id);
      clearTimeout(waiter.timer);
      if (msg.type === "error") waiter.reject(new SessionError(msg.code, msg.message));
      else waiter.resolve(msg);
    }
    const handler = EVENT_HANDLERS[msg.type];
    if (handler) {
      try {
        handler.call(this, msg);
      } catch (err) {
        console.error(`handling ${msg.type} failed`, err);
      }
    }
    if (msg.id === undefined || msg.type === "recording_state") this.emit(msg.type, msg);
  }

  /** @param {WebSocket} ws @param {CloseEvent} ev */
  _onSocketClose(ws, ev) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearInterval(this._pingTimer);
    for (const [id, w] of this._pending) {
      clearTimeout(w.timer);
      w.reject(new SessionError("not_connected", "socket closed"));
      this._pending.delete(id);
    }
    if (this._leaving || this.state === "closed" || this.state === "idle" || this.state === "connecting") return;
    if (this.state === "waiting" || !this.autoResume) {
      // There is no resume from the waiting room.
      this._teardown("disconnected");
      return;
    }
    this._log(`socket closed (${ev.code}); resuming`);
    this._resume();
  }

  async _resume() {
    if (this._resuming) return;
    this._resuming = true;
    this._setState("reconnecting");
    this.emit("reconnecting", {});
    const deadline = Date.now() + this.resumeWindowMs;
    let delay = 250;
    try {
      while (Date.now() < deadline && !this._leaving) {
        try {
          const resumed = await this._firstMessage({ type: "resume", token: this._token, participant_id: this.participantId, resume_token: this._resumeToken, protocol: PROTOCOL_VERSION });
          this._applyRoster(resumed);
          this._setState(resumed.state === "waiting" ? "waiting" : "active");
          this._startPing();
          if (resumed.restored) await this._restoreMedia();
          else await this._repairMedia(resumed);
          this.emit("reconnected", resumed);
          return;
        } catch (err) {
          this._closeSocket();
          if (err.code === "resume_failed") break;
          this._log(`resume attempt failed: ${err.code ?? err}`);
        }
        await sleep(delay);
        delay = Math.min(delay * 2, 4000);
      }
      if (!this._leaving) await this._rejoin();
    } finally {
      this._resuming = false;
    }
  }

  /** The grace period is over: join again as a new participant and publish anew. */
  async _rejoin() {
    const local = [...this.localTracks.values()];
    this._closePeerConnections();
    this.localTracks.clear();
    this._setState("idle");
    try {
      await this.connect();
    } catch (err) {
      this._teardown(err.code ?? "disconnected");
      return;
    }
    if (this.state === "active" && local.length) {
      await this.publish(local.map((t) => ({ track: t.mediaStreamTrack, source: t.source, muted: t.muted })));
    }
    this.emit("rejoined", { participant_id: this.participantId });
  }

  /** After `resumed`: new media connections for those that died, missing tracks again. */
  async _repairMedia(resumed) {
    const dead = (pc) => pc && ["failed", "closed", "disconnected"].includes(pc.connectionState);
    if (dead(this.publisher)) await this.restartPublisher();
    const expected = new Set();
    for (const p of resumed.participants ?? []) for (const t of p.tracks ?? []) if (!t.muted) expected.add(t.track_id);
    const missing = this.autoSubscribe && [...expected].some((id) => !this.remoteTracks.has(id));
    if (dead(this.subscriber) || missing) await this.restartSubscriber();
  }

  _setState(state, reason) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state, reason });
  }

  _teardown(reason) {
    clearInterval(this._pingTimer);
    this._closeSocket();
    this._closePeerConnections();
    for (const { detach } of this._attachments.values()) detach();
    this._attachments.clear();
    if (typeof document !== "undefined") document.removeEventListener("visibilitychange", this._onVisibility);
    this._setState("closed", reason);
    this.emit("disconnected", { reason });
  }

  _closePeerConnections() {
    for (const id of [...this.remoteTracks.keys()]) this._dropRemoteTrack(id);
    this.publisher?.close();
    this.subscriber?.close();
    this.publisher = this.subscriber = null;
    this._subMids.clear();
  }

  /** Hang up: `leave`, then close everything. */
  async leave() {
    this._leaving = true;
    try {
      if (this._ws) await this.request({ type: "leave" }, 3000);
    } catch {
      // Leaving anyway.
    }
    this._teardown("left");
  }

  // ---- roster ---------------------------------------------------------------------------

  _applyRoster(reply) {
    this.participantId = reply.participant_id ?? this.participantId;
    this._resumeToken = reply.resume_token ?? this._resumeToken;
    if (reply.room) this.room = reply.room;
    if (reply.permissions) this.permissions = reply.permissions;
    this.participants.clear();
    for (const p of reply.participants ?? []) this._addParticipant(p);
    this.waiting.clear();
    for (const w of reply.waiting ?? []) this.waiting.set(w.participant_id, w);
    if (reply.recording) this.recording = reply.recording;
  }

  _addParticipant(p) {
    const tracks = new Map((p.tracks ?? []).map((t) => [t.track_id, t]));
    const entry = { ...p, tracks };
    this.participants.set(p.participant_id, entry);
    return entry;
  }

  /** @param {string} permission */
  can(permission) {
    return this.permissions.includes(permission);
  }

  // ---- publishing ------------------------------------------------------------------------

  _pcConfig() {
    return { iceServers: this.iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" };
  }

  _newPublisher() {
    const pc = new RTCPeerConnection(this._pcConfig());
    this._pubCandidates = [];
    pc.onicecandidate = (ev) => this._candidate("publisher", pc, ev.candidate);
    this._watchMedia(pc, "publisher");
    return pc;
  }

  /**
   * A media connection that stays disconnected (the network path changed or died) or fails is
   * replaced by a new one: the server has no ICE restart.
   */
  _watchMedia(pc, target) {
    let timer = null;
    const current = () => pc === (target === "publisher" ? this.publisher : this.subscriber);
    const restart = () => {
      if (!current() || this.state !== "active") return;
      this._log(`${target} connection ${pc.connectionState}: new connection`);
      const run = target === "publisher" ? this.restartPublisher() : this.restartSubscriber();
      run.catch((err) => this._log(`${target} restart failed: ${err.code ?? err}`));
    };
    pc.onconnectionstatechange = () => {
      this.emit("media_state", { target, state: pc.connectionState });
      clearTimeout(timer);
      if (pc.connectionState === "failed") restart();
      else if (pc.connectionState === "disconnected") timer = setTimeout(restart, MEDIA_RECOVERY_MS);
    };
  }

  _candidate(target, pc, candidate) {
    if (pc !== (target === "publisher" ? this.publisher : this.subscriber)) return;
    if (!candidate || !candidate.candidate) return; // the server does not need end-of-candidates
    const init = candidate.toJSON();
    const queue = target === "publisher" ? this._pubCandidates : this._subCandidates;
    if (queue) queue.push(init);
    else this._sendCandidate(target, init);
  }

  _sendCandidate(target, init) {
    this.request({ type: "candidate", target, candidate: init }).catch((err) => this._log(`candidate refused: ${err.code}`));
  }

  _flushCandidates(target) {
    const queue = target === "publisher" ? this._pubCandidates : this._subCandidates;
    if (target === "publisher") this._pubCandidates = null;
    else this._subCandidates = null;
    for (const init of queue ?? []) this._sendCandidate(target, init);
  }

  /**
   * Publish tracks (camera, microphone, screen). Accepts a MediaStream, MediaStreamTracks or
   * {track, source, muted, simulcast} entries. Resolves with the new LocalTracks.
   * @param {MediaStream|Array<MediaStreamTrack|{track: MediaStreamTrack, source?: string, muted?: boolean, simulcast?: boolean}>} what
   * @returns {Promise<LocalTrack[]>}
   */
  publish(what) {
    const run = () => this._publish(what);
    const p = this._pubChain.then(run, run);
    this._pubChain = p.catch(() => {});
    return p;
  }

  async _publish(what) {
    if (!this.can("publish")) throw new SessionError("permission_denied", "this participant may not publish");
    const entries = (what instanceof MediaStream ? what.getTracks() : what).map((e) =>
      e instanceof MediaStreamTrack ? { track: e } : e);
    if (!this.publisher) this.publisher = this._newPublisher();
    const pc = this.publisher;
    const added = [];
    for (const e of entries) {
      const source = e.source ?? (e.track.kind === "audio" ? "microphone" : "camera");
      const init = { direction: "sendonly", streams: [new MediaStream([e.track])] };
      const simulcast = e.track.kind === "video" && source === "camera" && (e.simulcast ?? this.simulcast) && bigEnough(e.track);
      if (simulcast) init.sendEncodings = SIMULCAST_LAYERS.map((l) => ({ ...l }));
      const transceiver = pc.addTransceiver(e.track, init);
      added.push({ transceiver, source, muted: !!e.muted, track: e.track, simulcast });
    }
    const answer = await this._negotiatePublisher(pc, false, added);
    const out = [];
    for (const info of answer.tracks) {
      const a = added.find((x) => x.transceiver.mid === info.mid);
      if (!a) continue;
      const local = { track_id: info.track_id, kind: info.kind, source: info.source, mediaStreamTrack: a.track, transceiver: a.transceiver, muted: a.muted, simulcast: false };
      if (a.muted) a.track.enabled = false;
      if (a.simulcast) local.simulcast = await this._checkSimulcast(a.transceiver.sender);
      this.localTracks.set(info.track_id, local);
      out.push(local);
      this.emit("local_track_published", local);
    }
    return out;
  }

  /** Offer, send publish_offer, apply the answer. */
  async _negotiatePublisher(pc, restart, added = []) {
    await pc.setLocalDescription(await pc.createOffer());
    const tracks = [];
    for (const t of pc.getTransceivers()) {
      if (t.currentDirection === "stopped" || !t.mid) continue;
      const a = added.find((x) => x.transceiver === t);
      const local = [...this.localTracks.values()].find((l) => l.transceiver === t);
      const entry = { mid: t.mid, source: a?.source ?? local?.source ?? (t.sender.track?.kind === "audio" ? "microphone" : "camera") };
      if (a?.muted || local?.muted) entry.muted = true;
      if (restart && local) entry.track_id = local.track_id;
      tracks.push(entry);
    }
    const answer = await this.request({ type: "publish_offer", sdp: pc.localDescription.sdp, tracks, restart });
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    this._flushCandidates("publisher");
    return answer;
  }

  /**
   * A server that does not accept simulcast answers without a=simulcast, and the browser then
   * keeps only the first (lowest) encoding: send that one at full size instead.
   */
  async _checkSimulcast(sender) {
    const params = sender.getParameters();
    if ((params.encodings ?? []).length > 1) return true;
    const full = SIMULCAST_LAYERS[SIMULCAST_LAYERS.length - 1];
    if (params.encodings?.length === 1) {
      params.encodings[0].scaleResolutionDownBy = full.scaleResolutionDownBy;
      params.encodings[0].maxBitrate = full.maxBitrate;
      await sender.setParameters(params);
    }
    return false;
  }

  /** Publish the same tracks on a new publisher connection (after a network change). */
  restartPublisher() {
    const run = () => this._restartPublisher();
    const p = this._pubChain.then(run, run);
    this._pubChain = p.catch(() => {});
    return p;
  }

  async _restartPublisher() {
    const old = this.publisher;
    const local = [...this.localTracks.values()];
    old?.close();
    const pc = (this.publisher = this._newPublisher());
    const added = [];
    for (const l of local) {
      const init = { direction: "sendonly", streams: [new MediaStream([l.mediaStreamTrack])] };
      if (l.simulcast) init.sendEncodings = SIMULCAST_LAYERS.map((x) => ({ ...x }));
      l.transceiver = pc.addTransceiver(l.mediaStreamTrack, init);
      added.push({ transceiver: l.transceiver, source: l.source, muted: l.muted, track: l.mediaStreamTrack });
    }
    await this._negotiatePublisher(pc, true, added);
    for (const l of local) if (l.simulcast) l.simulcast = await this._checkSimulcast(l.transceiver.sender);
  }

  /** Stop publishing a track: deactivate its m-line and renegotiate. @param {string} trackId */
  unpublish(trackId) {
    const run = async () => {
      const local = this.localTracks.get(trackId);
      if (!local) throw new SessionError("track_not_found", "no such local track");
      this.localTracks.delete(trackId);
      local.transceiver.direction = "inactive";
      await local.transceiver.sender.replaceTrack(null);
      await this._negotiatePublisher(this.publisher, false);
    };
    const p = this._pubChain.then(run, run);
    this._pubChain = p.catch(() => {});
    return p;
  }

  /**
   * Mute or unmute one of your tracks: stops sending on this side and tells the server.
   * @param {string} trackId @param {boolean} muted
   */
  async setMuted(trackId, muted) {
    const local = this.localTracks.get(trackId);
    if (!local) throw new SessionError("track_not_found", "no such local track");
    local.muted = muted;
    local.mediaStreamTrack.enabled = !muted;
    await this.request({ type: "mute", track_id: trackId, muted });
  }

  /** @param {"audio"|"video"} kind @returns {LocalTrack|undefined} */
  localTrackOf(kind) {
    return [...this.localTracks.values()].find((t) => t.kind === kind && t.source !== "screen" && t.source !== "screen_audio");
  }

  /**
   * This subscriber's own limits (adaptation, see docs/protocol.md): receive audio only, or at
   * most `maxBitrate` bits per second (0 removes the cap), and `startBitrate`, what the link
   * carries now (the server's estimate starts there). Omitted fields stay as they were.
   * @param {{audioOnly?: boolean, maxBitrate?: number, startBitrate?: number}} limits
   */
  setBandwidth(limits) {
    const msg = { type: "set_bandwidth" };
    if (limits.audioOnly !== undefined) msg.audio_only = !!limits.audioOnly;
    if (limits.maxBitrate !== undefined) msg.max_bitrate = Math.max(0, Math.round(limits.maxBitrate));
    if (limits.startBitrate !== undefined) msg.start_bitrate = Math.max(0, Math.round(limits.startBitrate));
    return this.request(msg);
  }

  /**
   * Tell the server what this device's downlink carries before media starts (right after
   * joining or being admitted, ahead of the subscriber answer). A receiver's first reports
   * come a second or two after media starts; on a link thinner than audio plus the lowest
   * video layer that is long enough to lose audio.
   */
  _sendStartBitrate() {
    let bps = this.startBitrate;
    if (bps === "auto") {
      const conn = typeof navigator !== "undefined" ? navigator.connection : undefined;
      // Chrome's estimate of the recent downlink (Mbit/s, 25 kbit/s steps); only a weak
      // link is worth telling: above that, the server's own start and probes do better.
      const mbps = conn?.downlink;
      const weak = conn?.effectiveType === "slow-2g" || conn?.effectiveType === "2g";
      bps = typeof mbps === "number" && mbps > 0 && (mbps < 0.5 || weak) ? Math.round(mbps * 1e6) : null;
    }
    if (typeof bps !== "number" || !(bps > 0)) return;
    this._log(`start bitrate ${bps} bit/s`);
    this.setBandwidth({ startBitrate: bps }).catch((err) => this._log(`start bitrate not taken: ${err.message}`));
  }

  /** Receive audio only (for a bad connection), or video again. @param {boolean} enabled */
  setAudioOnly(enabled) {
    return this.setBandwidth({ audioOnly: enabled });
  }

  // ---- receiving -------------------------------------------------------------------------

  _onSubscriberOffer(msg) {
    const run = () => this._answerSubscriber(msg);
    this._subChain = this._subChain.then(run, run).catch((err) => this._log(`subscriber answer failed: ${err.code ?? err}`));
  }

  async _answerSubscriber(msg) {
    let pc = this.subscriber;
    if (!pc) {
      pc = this.subscriber = new RTCPeerConnection(this._pcConfig());
      this._subMids.clear();
      this._subCandidates = [];
      pc.onicecandidate = (ev) => this._candidate("subscriber", pc, ev.candidate);
      pc.ontrack = (ev) => this._onRemoteTrack(pc, ev);
      this._watchMedia(pc, "subscriber");
    }
    for (const t of msg.tracks ?? []) this._subMids.set(t.mid, t);
    await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    if (pc !== this.subscriber) return; // restarted meanwhile
    await this.request({ type: "subscriber_answer", sdp: pc.localDescription.sdp });
    this._flushCandidates("subscriber");
    // m-lines the server deactivated: their tracks are gone. (A track subscribed again comes
    // on a new m-line; the old one stays inactive and must not take the new one away.)
    for (const t of pc.getTransceivers()) {
      const info = this._subMids.get(t.mid);
      if (!info || t.currentDirection !== "inactive") continue;
      this._subMids.delete(t.mid);
      if (this.remoteTracks.get(info.track_id)?.receiver === t.receiver) this._dropRemoteTrack(info.track_id);
    }
  }

  _onRemoteTrack(pc, ev) {
    const info = this._subMids.get(ev.transceiver.mid);
    if (!info || pc !== this.subscriber) return;
    const existing = this.remoteTracks.get(info.track_id);
    if (existing && existing.mediaStreamTrack === ev.track) return;
    /** @type {RemoteTrack} */
    const remote = { track_id: info.track_id, participant_id: info.participant_id, kind: info.kind, source: info.source, mediaStreamTrack: ev.track, stream: new MediaStream([ev.track]), streamState: null, receiver: ev.receiver };
    this.remoteTracks.set(info.track_id, remote);
    this.emit("track_subscribed", remote);
  }

  _dropRemoteTrack(trackId) {
    const remote = this.remoteTracks.get(trackId);
    if (!remote) return;
    this.remoteTracks.delete(trackId);
    this._attachments.get(trackId)?.detach();
    this._prefs.delete(trackId);
    this.emit("track_unsubscribed", remote);
  }

  /** New subscriber connection with everything on it (after the old one failed). */
  async restartSubscriber() {
    for (const id of [...this.remoteTracks.keys()]) this._dropRemoteTrack(id);
    this.subscriber?.close();
    this.subscriber = null; // the next subscriber_offer makes a new one
    this._prefs.clear();
    await this.request({ type: "subscriber_restart" });
  }

  /** @param {string} trackId */
  subscribe(trackId) {
    return this.request({ type: "subscribe", track_id: trackId });
  }

  /** @param {string} trackId */
  unsubscribe(trackId) {
    return this.request({ type: "unsubscribe", track_id: trackId });
  }

  /**
   * Replace this client's preferences for a track (each message replaces the last).
   * @param {string} trackId
   * @param {{disabled?: boolean, max_width?: number, max_height?: number, max_fps?: number, pinned?: boolean}} prefs
   */
  setPreferences(trackId, prefs) {
    this._prefs.set(trackId, JSON.stringify(prefs));
    return this.request({ type: "set_preferences", track_id: trackId, ...prefs });
  }

  /**
   * Show a remote track in an element. For video the SDK then keeps the server told what the
   * element needs: its size in device pixels (max_width/max_height), and `disabled` while the
   * element is scrolled out of view, not displayed, or the page is hidden.
   * `pinned` asks the server to favour this track when bandwidth is short (the person the user
   * chose to watch); the dominant speaker is favoured without asking.
   * @param {string} trackId @param {HTMLMediaElement} element @param {{maxFps?: number, pinned?: boolean}} [opts]
   * @returns {() => void} detach
   */
  attach(trackId, element, opts = {}) {
    const remote = this.remoteTracks.get(trackId);
    if (!remote) throw new SessionError("track_not_found", "not receiving this track");
    this._attachments.get(trackId)?.detach();
    element.srcObject = remote.stream;
    element.play?.().catch(() => {}); // autoplay policies: muted video plays, audio may need a click
    if (remote.kind !== "video") {
      const detach = () => {
        this._attachments.delete(trackId);
        if (element.srcObject === remote.stream) element.srcObject = null;
      };
      this._attachments.set(trackId, { element, detach });
      return detach;
    }
    const state = { element, visible: true, width: 0, height: 0, maxFps: opts.maxFps, pinned: !!opts.pinned, timer: null };
    const resize = new ResizeObserver(() => {
      state.width = element.clientWidth;
      state.height = element.clientHeight;
      this._schedulePreferences(trackId);
    });
    const seen = new IntersectionObserver((entries) => {
      for (const e of entries) state.visible = e.isIntersecting;
      this._schedulePreferences(trackId);
    });
    resize.observe(element);
    seen.observe(element);
    const detach = () => {
      resize.disconnect();
      seen.disconnect();
      clearTimeout(state.timer);
      if (this._attachments.get(trackId)?.state === state) this._attachments.delete(trackId);
      if (element.srcObject === remote.stream) element.srcObject = null;
    };
    this._attachments.set(trackId, { element, detach, state });
    return detach;
  }

  _schedulePreferences(trackId) {
    const a = this._attachments.get(trackId);
    if (!a?.state) return;
    clearTimeout(a.state.timer);
    a.state.timer = setTimeout(() => this._sendPreferences(trackId), PREFERENCES_DEBOUNCE_MS);
  }

  _sendPreferences(trackId) {
    const a = this._attachments.get(trackId);
    if (!a?.state || !this.remoteTracks.has(trackId) || this.state !== "active") return;
    const s = a.state;
    const dpr = globalThis.devicePixelRatio || 1;
    const shown = s.visible && !this._pageHidden && s.width > 0 && s.height > 0;
    const prefs = shown ? { disabled: false, max_width: Math.round(s.width * dpr), max_height: Math.round(s.height * dpr) } : { disabled: true };
    if (shown && s.maxFps) prefs.max_fps = s.maxFps;
    if (shown && s.pinned) prefs.pinned = true;
    if (this._prefs.get(trackId) === JSON.stringify(prefs)) return;
    this.setPreferences(trackId, prefs).catch((err) => this._log(`set_preferences failed: ${err.code}`));
  }

  // ---- host controls, recording, stats --------------------------------------------------

  /** @param {string} participantId */
  admit(participantId) {
    return this.request({ type: "admit", participant_id: participantId });
  }

  /** @param {string} participantId @param {string} [reason] */
  deny(participantId, reason) {
    return this.request({ type: "deny", participant_id: participantId, ...(reason ? { reason } : {}) });
  }

  /** @param {string} participantId @param {{muted?: boolean, trackId?: string}} [opts] */
  muteParticipant(participantId, opts = {}) {
    const msg = { type: "mute_participant", participant_id: participantId, muted: opts.muted ?? true };
    if (opts.trackId) msg.track_id = opts.trackId;
    return this.request(msg);
  }

  /** @param {string} participantId */
  removeParticipant(participantId) {
    return this.request({ type: "remove_participant", participant_id: participantId });
  }

  /** @param {boolean} locked */
  lockRoom(locked) {
    return this.request({ type: "lock_room", locked });
  }

  endRoom() {
    return this.request({ type: "end_room" });
  }

  recordStart() {
    return this.request({ type: "record_start" });
  }

  recordStop() {
    return this.request({ type: "record_stop" });
  }

  /** Answer a consent_request. @param {boolean} granted */
  consent(granted) {
    return this.request({ type: "consent", granted });
  }

  withdrawConsent() {
    return this.request({ type: "consent_withdraw" });
  }

  /** The server's view of this participant's connection (the `stats` reply). */
  getStats() {
    return this.request({ type: "get_stats" });
  }
}

// Server events: state kept by the SDK before the event is emitted to the app.
/** @type {Record<string, (this: Session, msg: any) => void>} */
const EVENT_HANDLERS = {
  subscriber_offer(msg) {
    this._onSubscriberOffer(msg);
  },
  participant_joined(msg) {
    this._addParticipant(msg.participant);
  },
  participant_left(msg) {
    this.participants.delete(msg.participant_id);
    this.quality.delete(msg.participant_id);
    for (const r of [...this.remoteTracks.values()]) if (r.participant_id === msg.participant_id) this._dropRemoteTrack(r.track_id);
  },
  participant_waiting(msg) {
    this.waiting.set(msg.participant.participant_id, msg.participant);
  },
  waiting_left(msg) {
    this.waiting.delete(msg.participant_id);
  },
  admitted(msg) {
    this._applyRoster({ participants: msg.participants });
    this._setState("active");
    this._sendStartBitrate();
  },
  denied() {
    this._leaving = true; // the server closes the socket next: no resume, no "disconnected"
    queueMicrotask(() => this._teardown("denied"));
  },
  resumed(msg) {
    if (!msg.restored) return;
    // Before the subscriber_offer that follows is handled: it is for a new connection.
    for (const id of [...this.remoteTracks.keys()]) this._dropRemoteTrack(id);
    this.subscriber?.close();
    this.subscriber = null;
  },
  removed(msg) {
    if (msg.reason === "room_moved") {
      // A cluster moved the room: the server closes this socket, and resuming (redirected to
      // the room's new node) seats us again. Nothing to tear down.
      this._log("the room moved to another node: resuming");
      return;
    }
    this._leaving = true; // do not resume: the server let us go
    queueMicrotask(() => this._teardown(msg.reason));
  },
  track_published(msg) {
    const p = this.participants.get(msg.track.participant_id);
    p?.tracks.set(msg.track.track_id, msg.track);
  },
  track_unpublished(msg) {
    this.participants.get(msg.participant_id)?.tracks.delete(msg.track_id);
    this._dropRemoteTrack(msg.track_id);
  },
  track_muted(msg) {
    this._setTrackMuted(msg, true);
  },
  track_unmuted(msg) {
    this._setTrackMuted(msg, false);
  },
  room_updated(msg) {
    if (this.room) this.room.locked = msg.locked;
  },
  speakers_changed(msg) {
    this.dominantSpeaker = msg.dominant;
  },
  connection_quality(msg) {
    for (const u of msg.updates) this.quality.set(u.participant_id, { level: u.level, score: u.score });
  },
  recording_state(msg) {
    this.recording = { state: msg.state, pending: msg.pending, recording_id: msg.recording_id };
  },
  stream_state(msg) {
    const r = this.remoteTracks.get(msg.track_id);
    if (r) r.streamState = { state: msg.state, reason: msg.reason, spatial: msg.spatial, temporal: msg.temporal, width: msg.width, height: msg.height };
  },
  publisher_layers(msg) {
    const local = this.localTracks.get(msg.track_id);
    if (!local || local.kind !== "video") return;
    const sender = local.transceiver.sender;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) return;
    const active = new Set(msg.active);
    for (const enc of params.encodings) enc.active = active.has(enc.rid);
    sender.setParameters(params).catch((err) => this._log(`setParameters failed: ${err}`));
  },
};

Session.prototype._setTrackMuted = function (msg, muted) {
  if (msg.participant_id === this.participantId) {
    const local = this.localTracks.get(msg.track_id);
    if (local) {
      local.muted = muted;
      // A host muted us: stop sending too. Unmuting is the user's decision (setMuted).
      if (muted) local.mediaStreamTrack.enabled = false;
    }
    return;
  }
  const t = this.participants.get(msg.participant_id)?.tracks.get(msg.track_id);
  if (t) t.muted = muted;
};

// ---- pre-call check ---------------------------------------------------------------------

/**
 * @typedef {Object} CheckResult
 * @property {"ok"|"warn"|"fail"} status
 * @property {string} detail  One sentence for the user.
 * @property {Record<string, any>} [data]
 */

/**
 * Check camera, microphone, the signalling server and WebRTC before joining. The stream it
 * opened is returned so that the page can preview it and publish it without asking again.
 * `onStream` is called as soon as the camera and microphone are open (a page may let the user
 * join from then on), `onResult` as each check finishes.
 * @param {{url?: string, video?: MediaTrackConstraints|boolean, audio?: MediaTrackConstraints|boolean, iceServers?: RTCIceServer[], timeoutMs?: number, onStream?: (stream: MediaStream|null) => void, onResult?: (name: string, result: CheckResult) => void}} [opts]
 * @returns {Promise<{ok: boolean, stream: MediaStream|null, camera: CheckResult, microphone: CheckResult, signalling: CheckResult, network: CheckResult}>}
 */
export async function preCallCheck(opts = {}) {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const result = { ok: false, stream: null, camera: null, microphone: null, signalling: null, network: null };
  const report = (name, r) => {
    result[name] = r;
    opts.onResult?.(name, r);
  };
  const media = checkMedia(opts, timeoutMs).then((m) => {
    result.stream = m.stream;
    report("camera", m.camera);
    report("microphone", m.microphone);
  });
  const signalling = checkSignalling(opts.url ?? defaultSignalUrl(), timeoutMs).then((r) => report("signalling", r));
  const network = checkNetwork(opts.iceServers ?? [], timeoutMs).then((r) => report("network", r));
  await Promise.all([media, signalling, network]);
  result.ok = [result.camera, result.microphone, result.signalling, result.network].every((c) => c.status !== "fail");
  return result;
}

async function checkMedia(opts, timeoutMs) {
  const want = { video: opts.video ?? true, audio: opts.audio ?? true };
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(want);
  } catch (err) {
    const detail = err.name === "NotAllowedError" ? "Camera and microphone access was refused: allow it in the browser's site settings." : err.name === "NotFoundError" ? "No camera or microphone was found." : `Camera or microphone could not be opened (${err.name}).`;
    const fail = { status: "fail", detail };
    opts.onStream?.(null);
    return { stream: null, camera: want.video ? fail : skipped(), microphone: want.audio ? fail : skipped() };
  }
  opts.onStream?.(stream);
  const [video] = stream.getVideoTracks();
  const [audio] = stream.getAudioTracks();
  const [camera, microphone] = await Promise.all([
    video ? checkCamera(video, timeoutMs) : Promise.resolve(want.video ? { status: "fail", detail: "No camera track." } : skipped()),
    audio ? checkMicrophone(audio, Math.min(timeoutMs, 1500)) : Promise.resolve(want.audio ? { status: "fail", detail: "No microphone track." } : skipped()),
  ]);
  return { stream, camera, microphone };
}

function skipped() {
  return { status: "ok", detail: "Not used." };
}

async function checkCamera(track, timeoutMs) {
  const s = track.getSettings();
  const el = document.createElement("video");
  el.muted = true;
  el.playsInline = true;
  el.srcObject = new MediaStream([track]);
  const frames = await new Promise((resolve) => {
    let n = 0;
    const timer = setTimeout(() => resolve(n), timeoutMs);
    const tick = () => {
      if (++n >= 3) {
        clearTimeout(timer);
        resolve(n);
      } else el.requestVideoFrameCallback(tick);
    };
    el.requestVideoFrameCallback(tick);
    el.play().catch(() => {});
  });
  el.srcObject = null;
  const data = { label: track.label, width: s.width, height: s.height, frameRate: s.frameRate };
  if (frames < 3) return { status: "fail", detail: "The camera delivers no picture.", data };
  return { status: "ok", detail: `Camera works (${s.width}×${s.height}).`, data };
}

async function checkMicrophone(track, ms) {
  const ctx = new AudioContext();
  try {
    const analyser = ctx.createAnalyser();
    ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    let peak = 0;
    const end = performance.now() + ms;
    while (performance.now() < end) {
      await sleep(100);
      analyser.getFloatTimeDomainData(buf);
      for (const v of buf) peak = Math.max(peak, Math.abs(v));
    }
    const data = { label: track.label, peak };
    if (peak < 0.001) return { status: "warn", detail: "The microphone is silent: check that it is not muted.", data };
    return { status: "ok", detail: "Microphone works.", data };
  } finally {
    ctx.close();
  }
}

/** Round trips of `ping` on a fresh socket (allowed before join; no token is sent). */
async function checkSignalling(url, timeoutMs) {
  let ws;
  try {
    ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("socket error"));
      setTimeout(() => reject(new Error("timeout")), timeoutMs);
    });
    const rtts = [];
    for (let i = 0; i < 3; i++) {
      const sent = performance.now();
      await new Promise((resolve, reject) => {
        ws.onmessage = (ev) => {
          const msg = JSON.parse(ev.data);
          if (msg.type === "pong" && msg.id === `check-${i}`) resolve();
        };
        setTimeout(() => reject(new Error("timeout")), timeoutMs);
        ws.send(JSON.stringify({ type: "ping", id: `check-${i}` }));
      });
      rtts.push(performance.now() - sent);
    }
    rtts.sort((a, b) => a - b);
    const rtt = Math.round(rtts[1]);
    const data = { rtt_ms: rtt };
    if (rtt > 400) return { status: "warn", detail: `The server is slow to answer (${rtt} ms): expect delays.`, data };
    return { status: "ok", detail: `Server reachable (${rtt} ms).`, data };
  } catch (err) {
    return { status: "fail", detail: "The server cannot be reached: check the internet connection.", data: { error: String(err.message ?? err) } };
  } finally {
    ws?.close();
  }
}

/** Gather ICE candidates: shows whether WebRTC works here and which kinds of path exist. */
async function checkNetwork(iceServers, timeoutMs) {
  const pc = new RTCPeerConnection({ iceServers });
  try {
    const kinds = { host: 0, srflx: 0, relay: 0, prflx: 0 };
    pc.createDataChannel("check");
    const done = new Promise((resolve) => {
      pc.onicecandidate = (ev) => {
        if (!ev.candidate) return resolve();
        if (ev.candidate.type) kinds[ev.candidate.type] = (kinds[ev.candidate.type] ?? 0) + 1;
      };
      setTimeout(resolve, timeoutMs);
    });
    await pc.setLocalDescription(await pc.createOffer());
    await done;
    const total = Object.values(kinds).reduce((a, b) => a + b, 0);
    if (!total) return { status: "fail", detail: "No network path for audio and video was found (a firewall may block WebRTC).", data: kinds };
    if (iceServers.length && !kinds.srflx && !kinds.relay) return { status: "warn", detail: "Only local network addresses were found: calls may fail behind this firewall.", data: kinds };
    return { status: "ok", detail: "Audio and video can use this network.", data: kinds };
  } finally {
    pc.close();
  }
}

/**
 * Inbound video statistics of a received track, from the browser's getStats: frames decoded,
 * size, frame rate. Useful for "is the picture moving" checks and for tests.
 * @param {RemoteTrack} remote
 */
export async function inboundVideoStats(remote) {
  const report = await remote.receiver.getStats();
  for (const s of report.values()) {
    if (s.type === "inbound-rtp" && s.kind === "video") {
      return { framesDecoded: s.framesDecoded ?? 0, frameWidth: s.frameWidth ?? 0, frameHeight: s.frameHeight ?? 0, framesPerSecond: s.framesPerSecond ?? 0 };
    }
  }
  return { framesDecoded: 0, frameWidth: 0, frameHeight: 0, framesPerSecond: 0 };
}
