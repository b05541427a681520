// The multi-tab relay's de-duplication when standalone tabs race (no Web Locks: every tab syncs
// and commits to the shared store), against a stand-in for the Rust client: only js/core.js is
// under test here; the real client is covered by multi-tab.test.mjs in Chromium.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { makeKhalaSync } from '../js/core.js';

/** Enough of the wasm client for TabRelay: its own committed changes and a store. */
function fakeInner(store) {
  const queues = [];
  return {
    multiTab: true,
    persistent: true,
    own: (c) => queues.forEach((q) => q.push(c)),
    topics: () => ['t'],
    status: () => ({ state: 'connected', transport: 'websocket', topics: [] }),
    metrics: () => ({}),
    onStatus: () => 1,
    offStatus() {},
    start() {},
    async close() {},
    async get(_topic, key) {
      return store.get(key) ?? null;
    },
    subscribeChanges() {
      const items = [];
      const waiters = [];
      const q = {
        push: (c) => (waiters.length ? waiters.shift()(c) : items.push(c)),
        next: () => (items.length ? Promise.resolve(items.shift()) : new Promise((r) => waiters.push(r))),
        close() {},
      };
      queues.push(q);
      return q;
    },
  };
}

const upsert = (key, version, watermark) => ({ type: 'upsert', topic: 't', key, version, value: {}, watermark });
const tick = () => new Promise((r) => setTimeout(r, 20));

test('a change another standalone tab committed arrives late: delivered if current, dropped if superseded or seen', { timeout: 10_000 }, async () => {
  // Node has BroadcastChannel but no Web Locks: the relay runs standalone.
  const store = new Map([['a', { version: 2 }], ['b', { version: 1 }]]);
  const inner = fakeInner(store);
  const KhalaSync = makeKhalaSync({ WasmClient: { open: async () => inner } }, async () => {});
  const client = await KhalaSync.open({ dbName: 'relay-test' });
  const got = [];
  const reader = (async () => {
    for await (const c of client.changes('t')) {
      got.push(`${c.key}@${c.watermark}`);
      if (got.length === 3) break;
    }
  })();
  client.start();
  assert.equal(client.status().role, 'standalone');
  const other = new BroadcastChannel('khala-sync:relay-test');
  inner.own(upsert('a', 2, 4)); // this tab committed watermark 4 (a v2)
  await tick();
  other.postMessage({ t: 'change', c: upsert('b', 1, 1) }); // late, still b's current version
  other.postMessage({ t: 'change', c: upsert('a', 1, 2) }); // late, superseded by a v2
  other.postMessage({ t: 'change', c: upsert('a', 2, 4) }); // the same change again
  await tick();
  store.set('c', { version: 1 });
  other.postMessage({ t: 'change', c: upsert('c', 1, 5) }); // newer than anything delivered
  await reader;
  assert.deepEqual(got, ['a@4', 'b@1', 'c@5']);
  other.close();
  await client.close();
});
