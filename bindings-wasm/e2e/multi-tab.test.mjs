// End-to-end: several tabs of the web shell in one Chromium context (one origin, one profile)
// against the real dev server. Multi-tab sharing: one leader tab holds the Web Lock and the
// only socket, followers are fed over BroadcastChannel; closing the leader hands over. And the
// documented fallback when Web Locks are missing: every tab syncs on its own.
// This file starts its own dev server so `connections_current` counts only these pages.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openShell, waitLive, clientMetrics } from './harness.mjs';

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const role = (page) => page.evaluate(() => window.khala.client.role);
const log = (page) => page.evaluate(() => window.khala.log.slice());
const rowVersion = (page, key, version, timeout = 10_000) => page.waitForFunction(
  ([k, v]) => document.querySelector(`#docs tr[data-key="${k}"]`)?.dataset.version === String(v),
  [key, version],
  { timeout },
);

/** Waits until the server reports `n` open sockets (closing ones take a moment). */
async function socketsSettle(n, timeout = 5_000) {
  const end = Date.now() + timeout;
  let m;
  while (Date.now() < end) {
    m = await server.metrics();
    if (m.connections_current === n) return m;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(m.connections_current, n, 'sockets open on the server');
  return m;
}

/** Every page's stored documents and watermark equal the server's state. */
async function assertMatchesServer(pages) {
  const state = await server.state();
  const want = state.docs.map((d) => [d.doc_key, d.doc_version]).sort();
  for (const page of pages) {
    const got = await page.evaluate(async () => (await window.khala.client.list('runtime.run_summaries'))
      .map((d) => [d.key, d.version]));
    assert.deepEqual(got.sort(), want, 'stored documents equal the server state');
    await page.waitForFunction((h) => window.khala.client.status().topics[0].watermark === h, state.head);
  }
}

test('three tabs: one socket, same live changes, leader hand-off within 2 s without snapshot or duplicate apply', async () => {
  const db = 'e2e-tabs';
  const ctx = await browser.newContext();
  const m0 = await socketsSettle(0);
  const a = await openShell(ctx, server, { db });
  const b = await openShell(ctx, server, { db });
  const c = await openShell(ctx, server, { db });
  const pages = [a, b, c];
  assert.deepEqual(await Promise.all(pages.map(role)), ['leader', 'follower', 'follower']);
  assert.equal(await b.locator('#role').textContent(), 'follower');

  // Exactly one socket for the origin, one token, one snapshot.
  await new Promise((r) => setTimeout(r, 300));
  const m1 = await socketsSettle(1);
  assert.equal(m1.connections_accepted_total - m0.connections_accepted_total, 1, 'one socket opened in total');
  assert.equal(m1.tokens_minted - m0.tokens_minted, 1, 'only the leader fetched a token');
  assert.equal(m1.snapshots_started - m0.snapshots_started, 1, 'one snapshot for the three tabs');
  assert.equal((await clientMetrics(a)).snapshots, 1);
  assert.equal((await clientMetrics(b)).snapshots, 1, 'a follower reports the leader\'s counters');

  // Live changes: all three pages see the same changes, in the same order.
  const before = await Promise.all(pages.map(async (p) => (await log(p)).length));
  const keys = [1, 2, 3].map((i) => `runtime/run_summary:tabs-${i}`);
  for (const k of keys) await server.publish(k, { run_id: k, status: 'running' });
  await server.publish(keys[0], { run_id: keys[0], status: 'succeeded' });
  for (const p of pages) {
    await rowVersion(p, keys[0], 2);
    for (const k of keys.slice(1)) await rowVersion(p, k, 1);
  }
  const seen = await Promise.all(pages.map(async (p, i) => (await log(p)).slice(before[i])));
  assert.equal(seen[0].length, 4, `leader saw ${seen[0].join(', ')}`);
  assert.deepEqual(seen[1], seen[0], 'follower 1 saw the leader\'s changes');
  assert.deepEqual(seen[2], seen[0], 'follower 2 saw the leader\'s changes');
  // A follower's get() reads the shared store the leader wrote.
  const doc = await c.evaluate((k) => window.khala.client.get('runtime.run_summaries', k), keys[0]);
  assert.equal(doc.version, 2);
  assert.equal(doc.value.status, 'succeeded');
  assert.equal((await socketsSettle(1)).connections_current, 1);

  // Close the leader; publish while the hand-off runs.
  const mA = await clientMetrics(a);
  const m2 = await server.metrics();
  const wmBefore = await b.evaluate(() => window.khala.client.status().topics[0].watermark);
  // Timestamps taken inside the pages (page polling from the test would add its own delay).
  for (const p of [b, c]) {
    await p.evaluate(() => {
      window.handoff = {};
      window.khala.client.onStatus((s) => {
        if (s.role !== 'leader') return;
        window.handoff.leader ??= Date.now();
        if (s.live && s.state === 'connected') window.handoff.live ??= Date.now();
      });
    });
  }
  const t0 = Date.now();
  await a.close();
  const handoffKeys = [4, 5].map((i) => `runtime/run_summary:tabs-${i}`);
  for (const k of handoffKeys) await server.publish(k, { run_id: k, status: 'queued' });
  let leader;
  while (!leader && Date.now() - t0 < 5_000) {
    for (const p of [b, c]) if (await role(p) === 'leader') leader = p;
    if (!leader) await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(leader, 'a follower became leader');
  await waitLive(leader, 5_000);
  const h = await leader.evaluate(() => window.handoff);
  const tLeader = h.leader - t0;
  const tLive = h.live - t0;
  console.log(`# hand-off: new leader after ${tLeader} ms, connected and live after ${tLive} ms`);
  assert.ok(tLeader < 2_000, `new leader after ${tLeader} ms`);
  assert.ok(tLive < 2_000, `live after ${tLive} ms`);
  const follower = leader === b ? c : b;
  assert.equal(await role(follower), 'follower');

  for (const p of [b, c]) for (const k of handoffKeys) await rowVersion(p, k, 1);
  const m = await clientMetrics(leader);
  assert.equal(m.snapshots, 0, 'no snapshot after the hand-off');
  assert.equal(m.staleCursors, 0);
  assert.equal(m.duplicatesSkipped, 0, 'nothing the old leader committed came again');
  assert.equal(m.updatesApplied, handoffKeys.length, 'the new leader applied exactly the updates after the committed watermark');
  assert.ok(mA.updatesApplied >= 4, `old leader applied ${mA.updatesApplied}`);
  const m3 = await socketsSettle(1);
  assert.equal(m3.snapshots_started - m2.snapshots_started, 0, 'server served no snapshot');
  assert.equal(m3.subscribes_with_resume - m2.subscribes_with_resume, 1, 'the new leader subscribed with resume_after');
  assert.equal(m3.subscribes_without_resume - m2.subscribes_without_resume, 0);
  assert.equal(m3.connections_accepted_total - m2.connections_accepted_total, 1, 'one new socket');
  const wmAfter = await follower.evaluate(() => window.khala.client.status().topics[0].watermark);
  assert.ok(wmAfter > wmBefore, `watermark ${wmBefore} -> ${wmAfter}`);
  const tail = await Promise.all([b, c].map(async (p) => (await log(p)).filter((l) => /tabs-[45]/.test(l))));
  assert.equal(tail[0].length, 2, `hand-off changes seen: ${tail[0].join(', ')}`);
  assert.deepEqual(tail[1], tail[0], 'both remaining pages saw the hand-off changes once');

  await assertMatchesServer([b, c]);

  // close() on the leader hands over at once too (the page stays open).
  const t1 = Date.now();
  await leader.evaluate(() => window.khala.client.close());
  await follower.waitForFunction(() => window.khala.client.role === 'leader', null, { timeout: 5_000 });
  await waitLive(follower, 5_000);
  console.log(`# close(): the last follower leads and is live ${Date.now() - t1} ms later (incl. polling)`);
  assert.equal((await clientMetrics(follower)).snapshots, 0);
  assert.equal((await socketsSettle(1)).connections_current, 1);
  await server.publish('runtime/run_summary:tabs-6', { status: 'queued' });
  await rowVersion(follower, 'runtime/run_summary:tabs-6', 1);
  await assertMatchesServer([follower]);

  for (const p of pages) assert.deepEqual(p.errors, []);
  await ctx.close();
  await socketsSettle(0);
});

test('leader crash: the renderer dies, a follower takes over within 2 s without a snapshot', async () => {
  const db = 'e2e-crash';
  const ctx = await browser.newContext();
  await socketsSettle(0);
  const a = await openShell(ctx, server, { db });
  const b = await openShell(ctx, server, { db });
  assert.deepEqual([await role(a), await role(b)], ['leader', 'follower']);
  await socketsSettle(1);
  await b.evaluate(() => {
    window.handoff = {};
    window.khala.client.onStatus((s) => {
      if (s.role === 'leader' && s.live && s.state === 'connected') window.handoff.live ??= Date.now();
    });
  });
  const m0 = await server.metrics();
  const cdp = await ctx.newCDPSession(a);
  const t0 = Date.now();
  cdp.send('Page.crash').catch(() => {}); // no pagehide, no close frame: the process is gone
  await b.waitForFunction(() => window.handoff.live, null, { timeout: 5_000 });
  const took = (await b.evaluate(() => window.handoff.live)) - t0;
  console.log(`# crash: follower leads and is live after ${took} ms`);
  assert.ok(took < 2_000, `live after ${took} ms`);
  const key = 'runtime/run_summary:crash-1';
  await server.publish(key, { run_id: key, status: 'running' });
  await rowVersion(b, key, 1);
  const m = await clientMetrics(b);
  assert.equal(m.snapshots, 0);
  assert.equal(m.duplicatesSkipped, 0);
  assert.equal(m.updatesApplied, 1);
  const m1 = await socketsSettle(1);
  assert.equal(m1.snapshots_started - m0.snapshots_started, 0);
  assert.equal(m1.subscribes_with_resume - m0.subscribes_with_resume, 1);
  await assertMatchesServer([b]);
  assert.deepEqual(b.errors, []);
  await ctx.close();
});

/** On a failure, what every page's client says (status, metrics, change log) — the fallback
 * test below has timed out in about one full-suite run in eight, never alone. */
async function dumpPages(pages) {
  for (const [i, p] of pages.entries()) {
    if (p.isClosed()) continue;
    const info = await p.evaluate(() => JSON.stringify({
      status: window.khala.client.status(),
      metrics: window.khala.client.metrics?.(),
      log: window.khala.log.slice(-20),
    })).catch((e) => `unavailable: ${e}`);
    console.error(`page ${i}: ${info}`);
  }
}

test('Web Locks unavailable: every tab syncs on its own (documented fallback) and all converge', async () => {
  const db = 'e2e-nolocks';
  const ctx = await browser.newContext();
  const pages = [];
  try {
    await webLocksFallback(ctx, db, pages);
  } catch (e) {
    await dumpPages(pages);
    throw e;
  } finally {
    // A failure must not leave three sockets open for the next tests.
    await ctx.close();
  }
});

async function webLocksFallback(ctx, db, pages) {
  await ctx.addInitScript(() => {
    delete Navigator.prototype.locks;
  });
  const m0 = await socketsSettle(0);
  for (let i = 0; i < 3; i++) pages.push(await openShell(ctx, server, { db }));
  assert.equal(await pages[0].evaluate(() => 'locks' in navigator), false, 'Web Locks are disabled');
  assert.deepEqual(await Promise.all(pages.map(role)), ['standalone', 'standalone', 'standalone']);
  const m1 = await socketsSettle(3);
  assert.equal(m1.connections_accepted_total - m0.connections_accepted_total, 3, 'one socket per tab');
  // The first tab bootstrapped; the others found its committed watermark in the shared store.
  const snaps = await Promise.all(pages.map(async (p) => (await clientMetrics(p)).snapshots));
  assert.deepEqual(snaps, [1, 0, 0]);

  const keys = [1, 2, 3].map((i) => `runtime/run_summary:nolocks-${i}`);
  for (const k of keys) await server.publish(k, { run_id: k, status: 'running' });
  await server.publish(keys[1], { run_id: keys[1], status: 'failed' });
  // Every page shows every change (tabs that lost a commit race get it from the winner).
  // Without Web Locks three writers race on one IndexedDB; a tab whose commit failed retries
  // after its store backoff, so this fallback gets more time than the leader/follower tests
  // (one full-suite run in six timed out at 10 s here).
  for (const p of pages) {
    await rowVersion(p, keys[1], 2, 30_000);
    for (const k of [keys[0], keys[2]]) await rowVersion(p, k, 1, 30_000);
  }
  // No change twice, and each document's changes in version order (a tab that commits several
  // updates in one group reports a document's newest version only, so a page may see fewer than
  // four entries; a change another standalone tab committed can arrive after this tab's own
  // later ones, so the order across documents is not asserted — see TabRelay#deliverOther).
  for (const p of pages) {
    const l = (await log(p)).filter((x) => /nolocks-/.test(x));
    const wms = l.map((x) => Number(x.split('@')[1]));
    assert.ok(wms.length >= 3 && new Set(wms).size === wms.length, `changes once: ${l.join(', ')}`);
    const byKey = new Map();
    for (const x of l) {
      const [, key, v] = x.split(' ');
      const version = Number(v.slice(1));
      assert.ok(!(byKey.get(key) >= version), `${key} regressed or repeated: ${l.join(', ')}`);
      byKey.set(key, version);
    }
  }
  // Closing one tab leaves the others syncing.
  await pages[0].close();
  await socketsSettle(2);
  await server.publish(keys[2], { run_id: keys[2], status: 'succeeded' });
  for (const p of pages.slice(1)) await rowVersion(p, keys[2], 2);
  for (const p of pages.slice(1)) await waitLive(p);
  await assertMatchesServer(pages.slice(1));
  for (const p of pages) assert.deepEqual(p.errors, []);
}

// Headless Chromium keeps every page visible and does not fire `freeze` for a visible page
// (CDP Page.setWebLifecycleState(frozen) stops its tasks silently), so this test dispatches the
// lifecycle events the browser sends a background tab — `visibilitychange` with
// `visibilityState` 'hidden', `freeze`, `resume` — and checks the client's reaction on the
// server: a hidden leader keeps its socket and keeps applying; `freeze` closes the socket;
// `resume` reconnects and resumes from the committed watermark without a snapshot.
test('page lifecycle: hidden leader keeps syncing; freeze closes the socket; resume reconnects without a snapshot', async () => {
  const ctx = await browser.newContext();
  await socketsSettle(0);
  const page = await openShell(ctx, server, { db: 'e2e-freeze' });
  assert.equal(await role(page), 'leader');
  await socketsSettle(1);
  const fire = (name, target = 'document') => page.evaluate(([n, t]) => {
    (t === 'window' ? window : document).dispatchEvent(new Event(n));
  }, [name, target]);

  await page.evaluate(() => Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true }));
  await fire('visibilitychange');
  const hiddenKey = 'runtime/run_summary:hidden-1';
  await server.publish(hiddenKey, { run_id: hiddenKey, status: 'running' });
  await rowVersion(page, hiddenKey, 1);
  assert.equal((await socketsSettle(1)).connections_current, 1, 'a hidden leader keeps its socket');

  const before = await clientMetrics(page);
  await fire('freeze');
  await page.waitForFunction(() => window.khala.client.status().state === 'paused');
  await socketsSettle(0);
  const key = 'runtime/run_summary:frozen-1';
  await server.publish(key, { run_id: key, status: 'running' });
  await page.waitForTimeout(300);
  assert.equal(await page.locator(`#docs tr[data-key="${key}"]`).count(), 0, 'nothing arrives while frozen');
  const m0 = await server.metrics();
  await page.evaluate(() => Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true }));
  await fire('resume');
  await rowVersion(page, key, 1);
  await waitLive(page);
  const m = await clientMetrics(page);
  assert.equal(m.connects, before.connects + 1, `connects ${before.connects} -> ${m.connects}`);
  assert.equal(m.snapshots, before.snapshots, 'resumed from the committed watermark, no snapshot');
  const m1 = await socketsSettle(1);
  assert.equal(m1.subscribes_with_resume - m0.subscribes_with_resume, 1);
  assert.equal(m1.snapshots_started - m0.snapshots_started, 0);

  // pagehide (entering the back/forward cache) and pageshow behave the same way.
  await fire('pagehide', 'window');
  await socketsSettle(0);
  await fire('pageshow', 'window');
  await waitLive(page);
  assert.equal((await socketsSettle(1)).connections_current, 1);
  assert.equal((await clientMetrics(page)).snapshots, before.snapshots);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('online: a leader waiting in backoff reconnects at once (backoff reset)', async () => {
  const ctx = await browser.newContext();
  await socketsSettle(0);
  // 10-minute backoff window, fixed jitter seed: the scheduled retry is far away.
  const page = await openShell(ctx, server, { db: 'e2e-online', backoff: '600000', seed: '7' });
  const before = await clientMetrics(page);
  await server.faults({ restart: true }); // the server drops every socket
  await page.waitForFunction(() => window.khala.client.status().state === 'backoff');
  const wait = await page.evaluate(() => window.khala.client.status().nextRetryAt - Date.now());
  assert.ok(wait > 5_000, `next retry in ${wait} ms`);
  const m0 = await server.metrics();
  const t0 = Date.now();
  await page.evaluate(() => window.dispatchEvent(new Event('online')));
  await waitLive(page, 5_000);
  const took = Date.now() - t0;
  console.log(`# online: reconnected after ${took} ms (the scheduled retry was ${wait} ms away)`);
  assert.ok(took < 2_000, `reconnected after ${took} ms`);
  const m = await clientMetrics(page);
  assert.equal(m.connects, before.connects + 1, 'exactly one new connection attempt');
  assert.equal(m.snapshots, before.snapshots, 'no snapshot');
  const m1 = await socketsSettle(1);
  assert.equal(m1.subscribes_with_resume - m0.subscribes_with_resume, 1);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});
