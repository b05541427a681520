// Thin wrapper that turns the wasm-bindgen class into the documented API. No sync logic here:
// every decision is made by the Rust engine; this file only adapts calling conventions
// (async iterator protocol, unsubscribe functions) and, in browsers, relays one tab's client
// to the other tabs of the same origin and `dbName` (platform glue, see `TabRelay` below).

/** Change buffer per subscriber (same as the Rust side's CHANGE_BUFFER). */
const CHANGE_BUFFER = 8192;

/** Wraps a `{ next(): Promise<change|undefined>, close() }` source into an async iterator. */
function iterate(sub) {
  let done = false;
  return {
    [Symbol.asyncIterator]() {
      return this;
    },
    async next() {
      if (done) return { value: undefined, done: true };
      const value = await sub.next();
      if (value === undefined) {
        done = true;
        return { value: undefined, done: true };
      }
      return { value, done: false };
    },
    async return() {
      done = true;
      sub.close();
      return { value: undefined, done: true };
    },
  };
}

/** A JS-side change subscription with the contract of the wasm `ChangeSubscription`. */
class ChangeQueue {
  #items = [];
  #waiters = [];
  #closed = false;
  #onClose;
  constructor(onClose) {
    this.#onClose = onClose;
  }
  push(change) {
    if (this.#closed) return;
    const w = this.#waiters.shift();
    if (w) w(change);
    else if (this.#items.length < CHANGE_BUFFER) this.#items.push(change);
    // Full: this reader lags and skips this change (documented; re-read with list()).
  }
  next() {
    if (this.#items.length) return Promise.resolve(this.#items.shift());
    if (this.#closed) return Promise.resolve(undefined);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
  close() {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) w(undefined);
    this.#onClose?.();
  }
}

/**
 * One connection per origin and `dbName` across tabs. Exactly one tab — the holder of the Web
 * Lock `khala-sync:<dbName>` — runs the Rust driver (socket, token, store writes); the others
 * never start theirs. The leader relays its status, metrics and committed changes over the
 * `BroadcastChannel` of the same name; followers feed their listeners and `changes()`
 * iterators from it and read documents from the shared IndexedDB store. When the leader tab
 * goes away the lock passes to a waiting tab, which starts its (so far idle) driver: the engine
 * binds the store, reads the committed watermarks and resumes from them like a page reload.
 * Without Web Locks (role 'standalone') every tab runs its own driver and the channel only
 * carries committed changes, so each tab's changes() also reports what the others wrote.
 * This class only moves messages; it makes no sync decision.
 */
class TabRelay {
  #inner;
  #name;
  #topics;
  #role = 'follower';
  #status;
  #metrics;
  #listeners = new Map();
  #nextId = 0;
  #subs = new Map(); // topic -> Set<ChangeQueue>
  #delivered = new Map(); // topic -> watermark of the last change handed to the iterators
  #recent = new Map(); // topic -> Set of watermarks handed to the iterators lately
  #channel = null;
  #abort = null;
  #release = null;
  #started = false;
  #closed = false;
  #locks;

  constructor(inner, dbName, topics, locks) {
    this.#inner = inner;
    this.#name = `khala-sync:${dbName}`;
    this.#topics = topics;
    this.#locks = locks;
    if (!locks) this.#role = 'standalone';
    this.#status = inner.status();
    this.#metrics = inner.metrics();
  }

  get role() {
    return this.#role;
  }

  start() {
    if (this.#started || this.#closed) return;
    this.#started = true;
    this.#channel = new BroadcastChannel(this.#name);
    this.#channel.onmessage = (e) => this.#onMessage(e.data);
    if (!this.#locks) {
      // Fallback without Web Locks: this tab syncs on its own (own socket; the store's
      // watermark compare-and-set keeps the shared database consistent) and only shares
      // committed changes, so every tab's changes() also reports what other tabs wrote.
      this.#run();
      return;
    }
    this.#abort = new AbortController();
    globalThis.navigator.locks
      .request(this.#name, { signal: this.#abort.signal }, () => this.#lead())
      .catch((e) => {
        if (e?.name !== 'AbortError') console.error('khala-sync: Web Lock request failed', e);
      });
    this.#post({ t: 'hello' });
  }

  /** Runs while this tab holds the lock (until close() or the tab goes away). */
  async #lead() {
    if (this.#closed) return;
    this.#role = 'leader';
    this.#run();
    await new Promise((resolve) => {
      this.#release = resolve;
    });
  }

  /** Starts this tab's driver and relays what it reports. */
  #run() {
    // Subscribe before starting so no committed change is missed.
    for (const topic of this.#topics) this.#pump(this.#inner.subscribeChanges(topic));
    this.#inner.onStatus((s) => {
      if (this.#closed) return;
      this.#metrics = this.#inner.metrics();
      if (this.#role === 'leader') this.#post({ t: 'status', s, m: this.#metrics });
      this.#setStatus(s);
    });
    this.#inner.start();
  }

  async #pump(sub) {
    for (;;) {
      const c = await sub.next();
      if (c === undefined || this.#closed) return;
      this.#metrics = this.#inner.metrics();
      this.#post({ t: 'change', c, m: this.#metrics });
      this.#deliver(c);
    }
  }

  #onMessage(msg) {
    if (this.#closed || !msg || typeof msg !== 'object') return;
    if (this.#role !== 'follower') {
      if (msg.t === 'hello' && this.#role === 'leader') this.#post({ t: 'status', s: this.#inner.status(), m: this.#inner.metrics() });
      // A change the previous leader (or, without Web Locks, another standalone tab)
      // committed: hand it to the iterators (the store already has it).
      else if (msg.t === 'change') this.#deliverOther(msg.c);
      return;
    }
    if (msg.m) this.#metrics = msg.m;
    if (msg.t === 'status') this.#setStatus(msg.s);
    else if (msg.t === 'change') this.#deliver(msg.c);
  }

  #post(msg) {
    try {
      this.#channel?.postMessage(msg);
    } catch (e) {
      console.error('khala-sync: BroadcastChannel post failed', e);
    }
  }

  /**
   * Hands a committed change to this tab's iterators, once (by watermark per topic). A
   * `truncated` change (dialect F: an evicted range) has no watermark: it is passed on as is
   * and leaves the de-duplication mark alone.
   */
  #deliver(c) {
    if (typeof c.watermark === 'number') {
      const last = this.#delivered.get(c.topic);
      if (c.type !== 'bootstrapped' && last !== undefined && c.watermark <= last) return;
      this.#delivered.set(c.topic, Math.max(last ?? 0, c.watermark));
      this.#remember(c.topic, c.watermark);
    }
    for (const q of this.#subs.get(c.topic) ?? []) q.push(c);
  }

  /**
   * A change another tab committed. Normally newer than anything this tab delivered; but
   * standalone tabs race (without Web Locks every tab syncs and commits), so a change can
   * arrive after this tab already delivered a higher watermark of the topic. It is then still
   * delivered if it is its document's current state in the shared store — a document's last
   * change is never lost — and dropped if a newer version superseded it (never regress a
   * document). Order across documents is not kept in that case; each document's changes stay
   * in version order, and no (topic, watermark) is delivered twice.
   */
  async #deliverOther(c) {
    const last = this.#delivered.get(c.topic);
    if (typeof c.watermark !== 'number' || c.type === 'bootstrapped' || last === undefined || c.watermark > last) {
      this.#deliver(c);
      return;
    }
    if (this.#seen(c.topic).has(c.watermark) || (c.type !== 'upsert' && c.type !== 'delete')) return;
    let doc;
    try {
      doc = await this.#inner.get(c.topic, c.key);
    } catch {
      return;
    }
    if (this.#closed || this.#seen(c.topic).has(c.watermark)) return;
    const current = c.type === 'upsert' ? doc?.version === c.version : doc == null;
    if (!current) return;
    this.#remember(c.topic, c.watermark);
    for (const q of this.#subs.get(c.topic) ?? []) q.push(c);
  }

  /** Watermarks recently delivered per topic (late-change de-duplication, bounded). */
  #seen(topic) {
    let s = this.#recent.get(topic);
    if (!s) this.#recent.set(topic, (s = new Set()));
    return s;
  }

  #remember(topic, watermark) {
    const s = this.#seen(topic);
    s.add(watermark);
    if (s.size > 4096) s.delete(s.values().next().value);
  }

  #setStatus(s) {
    this.#status = s;
    this.#emit();
  }

  #emit() {
    const s = this.status();
    for (const cb of [...this.#listeners.values()]) {
      try {
        cb(s);
      } catch (e) {
        console.error('khala-sync: onStatus listener threw', e);
      }
    }
  }

  status() {
    return { ...this.#status, role: this.#role };
  }

  metrics() {
    return this.#role === 'follower' ? { ...this.#metrics } : this.#inner.metrics();
  }

  onStatus(cb) {
    const id = ++this.#nextId;
    this.#listeners.set(id, cb);
    cb(this.status());
    return () => this.#listeners.delete(id);
  }

  subscribe(topic) {
    // Validates the topic exactly like the leader would (typed invalid_config error).
    this.#inner.subscribeChanges(topic).close();
    let set = this.#subs.get(topic);
    if (!set) this.#subs.set(topic, (set = new Set()));
    const q = new ChangeQueue(() => set.delete(q));
    if (this.#closed) q.close();
    else set.add(q);
    return q;
  }

  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort?.abort();
    await this.#inner.close();
    this.#release?.(); // hands the lock to a waiting tab
    this.#channel?.close();
    for (const set of this.#subs.values()) for (const q of [...set]) q.close();
    this.#listeners.clear();
  }
}

const hasChannel = () => typeof globalThis.BroadcastChannel === 'function';
/** Web Locks exist in browsers on secure origins (https, localhost/127.0.0.1); not in Node. */
const hasLocks = () => typeof globalThis.navigator?.locks?.request === 'function';

/** @param {any} wasm the wasm-bindgen module; @param {() => Promise<void>} ready */
export function makeKhalaSync(wasm, ready) {
  class KhalaSyncClient {
    #c;
    #relay;
    constructor(inner, options) {
      this.#c = inner;
      this.#relay = inner.multiTab && hasChannel()
        ? new TabRelay(inner, options.dbName ?? 'khala-sync', inner.topics(), hasLocks())
        : null;
    }
    /**
     * Starts syncing in the background (no-op when already started). With multi-tab sharing,
     * joins the election: the leader tab syncs, the others follow it.
     */
    start() {
      if (this.#relay) this.#relay.start();
      else this.#c.start();
    }
    /** Pauses network activity; reads keep working. */
    pause() {
      this.#c.pause();
    }
    /** Resumes after pause() (or after an auth failure, retrying with fresh credentials). */
    resume() {
      this.#c.resume();
    }
    /** Reconnect now, backoff reset (the client also listens to online/offline itself). */
    networkChanged() {
      this.#c.networkChanged();
    }
    /** 'leader' / 'follower' (multi-tab sharing) or 'standalone' (this tab syncs alone). */
    get role() {
      return this.#relay ? this.#relay.role : 'standalone';
    }
    /** The current status (with `role`). */
    status() {
      return this.#relay ? this.#relay.status() : { ...this.#c.status(), role: 'standalone' };
    }
    /** Calls cb(status) now and on every change; returns an unsubscribe function. */
    onStatus(cb) {
      if (typeof cb !== 'function') throw new TypeError('onStatus needs a function');
      if (this.#relay) return this.#relay.onStatus(cb);
      const id = this.#c.onStatus((s) => cb({ ...s, role: 'standalone' }));
      return () => this.#c.offStatus(id);
    }
    /**
     * Committed changes of `topic` from this call on, as an async iterable. Breaking out of a
     * `for await` loop ends the subscription; close() ends every iterator.
     */
    changes(topic) {
      return iterate(this.#relay ? this.#relay.subscribe(topic) : this.#c.subscribeChanges(topic));
    }
    /** One stored document or null. */
    get(topic, key) {
      return this.#c.get(topic, key);
    }
    /** Every stored document of `topic`, sorted by key. */
    list(topic) {
      return this.#c.list(topic);
    }
    /** Engine counters (a follower reports the leader's). */
    metrics() {
      return this.#relay ? this.#relay.metrics() : this.#c.metrics();
    }
    /** The configured topics. */
    get topics() {
      return this.#c.topics();
    }
    /** True when the client persists to IndexedDB. */
    get persistent() {
      return this.#c.persistent;
    }
    /** Stops syncing, ends iterators, closes the database; a leader hands over at once. */
    async close() {
      if (this.#relay) await this.#relay.close();
      else await this.#c.close();
    }
  }

  return {
    /** Validates options and opens the store; does not touch the network until start(). */
    async open(options) {
      await ready();
      return new KhalaSyncClient(await wasm.WasmClient.open(options), options);
    },
  };
}
