// The npm package's Node entry (pkg/node.mjs, in-memory store) against the real dev server:
// the documented API shape — KhalaSync.open, onStatus unsubscribe, `for await` over changes,
// get/list, close — and typed errors. Node 20 runs this with --experimental-websocket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { TOPIC, startServer } from './harness.mjs';
import { KhalaSync } from '../pkg/node.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const credentials = async () => ({ Authorization: 'Bearer dev-app-token' });

test('for await over changes sees the bootstrap and a live upsert; break ends the iterator', async () => {
  const client = await KhalaSync.open({ baseUrl: server.base, topics: [TOPIC], credentials });
  assert.equal(client.persistent, false, 'Node has no IndexedDB: memory store');
  const states = [];
  const off = client.onStatus((s) => states.push(s.state));
  client.start();
  const key = `runtime/run_summary:node-pkg-${Date.now()}`;
  let published = false;
  const seen = [];
  for await (const change of client.changes(TOPIC)) {
    seen.push(change.type);
    if (!published && client.status().live) {
      published = true;
      await server.publish(key, { status: 'running', n: 7 });
    }
    if (change.type === 'bootstrapped' && !published) {
      // wait for live before publishing
      while (!client.status().live) await new Promise((r) => setTimeout(r, 20));
      published = true;
      await server.publish(key, { status: 'running', n: 7 });
    }
    if (change.type === 'upsert' && change.key === key) {
      assert.deepEqual(change.value, { status: 'running', n: 7 });
      assert.equal(change.version, 1);
      break;
    }
  }
  assert.equal(seen[0], 'bootstrapped');
  const doc = await client.get(TOPIC, key);
  assert.equal(doc.value.n, 7);
  assert.match(doc.payloadHash, /^[A-Za-z0-9+/]{43}=$/);
  const all = await client.list(TOPIC);
  assert.ok(all.some((d) => d.key === key));
  assert.deepEqual(all.map((d) => d.key), [...all.map((d) => d.key)].sort());
  off();
  const count = states.length;
  await client.close();
  assert.equal(states.length, count, 'no status after unsubscribe');
  assert.ok(states.includes('connected'), states.join(','));
  assert.equal(client.status().state, 'stopped');
});

test('close() ends a pending iterator', async () => {
  const client = await KhalaSync.open({ baseUrl: server.base, topics: [TOPIC], credentials });
  const it = client.changes(TOPIC)[Symbol.asyncIterator]();
  const pending = it.next();
  await client.close();
  assert.deepEqual(await pending, { value: undefined, done: true });
});

test('errors are Error objects with stable codes', async () => {
  await assert.rejects(
    KhalaSync.open({ baseUrl: 'http://sync.example.com', topics: [TOPIC], credentials }),
    (e) => e instanceof Error && e.code === 'invalid_config' && e.retryable === false,
  );
  const client = await KhalaSync.open({ baseUrl: server.base, topics: [TOPIC], credentials });
  assert.throws(() => client.changes('not.configured'), (e) => e.code === 'invalid_config');
  await client.close();
  assert.throws(() => client.start(), (e) => e.code === 'shutdown');
});

test('refused app credentials end in auth_failed with the stable code, and no token leaks', async () => {
  const client = await KhalaSync.open({
    baseUrl: server.base,
    topics: [TOPIC],
    credentials: async () => ({ Authorization: 'Bearer wrong-secret-token' }),
  });
  client.start();
  const deadline = Date.now() + 10_000;
  while (client.status().state !== 'auth_failed' && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const s = client.status();
  assert.equal(s.state, 'auth_failed');
  assert.equal(s.lastError.code, 'auth_failed');
  assert.ok(!JSON.stringify(s).includes('wrong-secret-token'));
  await client.close();
});
