// Thin wrapper that turns the wasm-bindgen class into the documented API. No sync logic here:
// every decision is made by the Rust engine; this file only adapts calling conventions
// (async iterator protocol, unsubscribe functions).

/** @param {any} wasm the wasm-bindgen module; @param {() => Promise<void>} ready */
export function makeKhalaSync(wasm, ready) {
  class KhalaSyncClient {
    #c;
    constructor(inner) {
      this.#c = inner;
    }
    /** Starts syncing in the background (no-op when already started). */
    start() {
      this.#c.start();
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
    /** The current status. */
    status() {
      return this.#c.status();
    }
    /** Calls cb(status) now and on every change; returns an unsubscribe function. */
    onStatus(cb) {
      if (typeof cb !== 'function') throw new TypeError('onStatus needs a function');
      const id = this.#c.onStatus(cb);
      return () => this.#c.offStatus(id);
    }
    /**
     * Committed changes of `topic` from this call on, as an async iterable. Breaking out of a
     * `for await` loop ends the subscription; close() ends every iterator.
     */
    changes(topic) {
      const sub = this.#c.subscribeChanges(topic);
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
    /** One stored document or null. */
    get(topic, key) {
      return this.#c.get(topic, key);
    }
    /** Every stored document of `topic`, sorted by key. */
    list(topic) {
      return this.#c.list(topic);
    }
    /** Engine counters. */
    metrics() {
      return this.#c.metrics();
    }
    /** The configured topics. */
    get topics() {
      return this.#c.topics();
    }
    /** True when the client persists to IndexedDB. */
    get persistent() {
      return this.#c.persistent;
    }
    /** Stops syncing, ends iterators, closes the database. */
    async close() {
      await this.#c.close();
    }
  }

  return {
    /** Validates options and opens the store; does not touch the network until start(). */
    async open(options) {
      await ready();
      return new KhalaSyncClient(await wasm.WasmClient.open(options));
    },
  };
}
