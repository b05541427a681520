// End-to-end, dialect F (runtime fanout): the web shell in headless Chromium polls event logs of
// real dev servers on loopback (browsers cannot send the Authorization header a fanout WebSocket
// needs, so the web client always uses the poll route). IndexedDB persistence as in the other
// suites; every test uses its own database name; server counters are compared as deltas.
//
// Server A: `--no-phoenix --seed-run r1:300` (a fanout-only server: the Phoenix socket route
// answers 404). Server B: `--ring-capacity 64` (events are evicted after 64, for truncation).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser } from './harness.mjs';

const RUN = 'run:r1:events';
const SEEDED = 300;
let serverA;
let serverB;
let browser;

before(async () => {
  [serverA, serverB] = await Promise.all([
    startServer(['--no-phoenix', '--seed-run', 'r1:300']),
    startServer(['--ring-capacity', '64']),
  ]);
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await serverA?.stop();
  await serverB?.stop();
});

const fanoutMetrics = async (server) => {
  const m = await server.metrics();
  return {
    polls: m.fanout_polls,
    rateLimited: m.fanout_rate_limited,
    stale: m.fanout_stale,
    evictions: m.fanout_evictions,
    upgrades: m.fanout_ws_upgrades,
  };
};
const events = (server, topic) => server.json('GET', `/dev/events/${encodeURIComponent(topic)}`);
const publishEvent = (server, topic, kind, payload) =>
  server.json('POST', '/dev/events', { topic, kind, payload });

/**
 * Opens the web shell for `params` with a recorder of every poll request (the page's `fetch`
 * is wrapped before any script runs; the wasm driver calls the global `fetch`). Page errors and
 * console errors fail the test unless `allowedConsole` matches them.
 */
async function openFanoutShell(ctx, server, params, allowedConsole = null) {
  const page = await ctx.newPage();
  await page.addInitScript(() => {
    const orig = window.fetch;
    window.__polls = [];
    window.fetch = function (input, init) {
      const url = input instanceof Request ? input.url : String(input); // string, URL or Request
      if (url.includes('/internal/v1/khala/topics/') && url.includes('/messages?')) {
        window.__polls.push({ t: performance.now(), url });
      }
      return orig.call(this, input, init);
    };
  });
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error' && !(allowedConsole && allowedConsole.test(m.text()))) {
      errors.push(new Error(m.text()));
    }
  });
  page.errors = errors;
  await page.goto(server.shellUrl(params));
  try {
    await waitLive(page);
  } catch (e) {
    const status = await page.evaluate(() => window.khala?.client.status()).catch(() => null);
    throw new Error(`not live: ${e.message}; status ${JSON.stringify(status)}; errors ${errors.map((x) => x.message).join(' | ')}`);
  }
  return page;
}

async function waitLive(page, timeout = 20_000) {
  await page.waitForFunction(
    () => window.khala && window.khala.client.status().live && window.khala.client.status().state === 'connected',
    null,
    { timeout },
  );
}

const docCount = (page) => page.evaluate(() => Number(document.getElementById('doc-count').textContent));
const waitDocCount = (page, n, timeout = 20_000) =>
  page.waitForFunction((n) => Number(document.getElementById('doc-count').textContent) === n, n, { timeout });
const topicStatus = (page, topic) =>
  page.evaluate((t) => window.khala.client.status().topics.find((x) => x.topic === t), topic);
const polls = (page) => page.evaluate(() => window.__polls.map((p) => ({ t: p.t, url: p.url })));
const afterSeq = (url) => Number(new URL(url).searchParams.get('after_seq'));

/** Every stored document of `topic` equals the server's retained message of that sequence. */
async function assertStoreMatchesServer(page, server, topic) {
  const server_ = await events(server, topic);
  const docs = await page.evaluate((t) => window.khala.client.list(t), topic);
  const byKey = new Map(docs.map((d) => [d.key, d]));
  assert.equal(byKey.size, docs.length, 'each key once');
  for (const msg of server_.messages) {
    const d = byKey.get(String(msg.sequence));
    assert.ok(d, `sequence ${msg.sequence} stored`);
    assert.equal(d.version, msg.sequence);
    assert.equal(d.watermark, msg.sequence);
    assert.deepEqual(d.value, msg, `sequence ${msg.sequence}: the whole message as published`);
  }
  return { docs, server: server_ };
}

test('fanout first sync over the poll route: every retained message once (key = sequence), transport "poll"', async () => {
  const ctx = await browser.newContext();
  const before = await fanoutMetrics(serverA);
  const page = await openFanoutShell(ctx, serverA, { topics: RUN, dialect: 'fanout', db: 'f-first', auth: 'provider' });
  await waitDocCount(page, SEEDED);
  const { docs, server } = await assertStoreMatchesServer(page, serverA, RUN);
  assert.equal(server.head_cursor, SEEDED);
  assert.equal(server.messages.length, SEEDED);
  assert.equal(docs.length, SEEDED, 'nothing but the server messages');
  assert.deepEqual(docs.map((d) => d.key).sort((a, b) => a - b), server.messages.map((m) => String(m.sequence)));
  const s = await page.evaluate(() => window.khala.client.status());
  assert.equal(s.transport, 'poll');
  assert.equal(s.topics[0].watermark, SEEDED);
  assert.equal(s.topics[0].phase, 'live');
  assert.equal(await page.locator('#transport').textContent(), 'poll');
  const m = await page.evaluate(() => window.khala.client.metrics());
  assert.equal(m.updatesApplied, SEEDED);
  assert.equal(m.duplicatesSkipped, 0);
  assert.equal(m.snapshots, 0, 'event logs have no snapshot');
  assert.deepEqual(await page.evaluate(() => window.khala.truncations), []);
  // Only polls: the browser client never upgrades to a fanout WebSocket.
  const p = await polls(page);
  assert.equal(afterSeq(p[0].url), 0, 'first poll from 0');
  const after = await fanoutMetrics(serverA);
  assert.equal(after.upgrades - before.upgrades, 0);
  assert.ok(after.polls - before.polls >= 2, `polls ${after.polls - before.polls} (300 events, pages of 200)`);
  assert.equal(after.rateLimited - before.rateLimited, 0);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('fanout live: an event published with POST /dev/events reaches the DOM and the store; reload resumes from the watermark', async () => {
  const ctx = await browser.newContext();
  let page = await openFanoutShell(ctx, serverA, { topics: RUN, dialect: 'fanout', db: 'f-live', poll: '300' });
  const head = (await events(serverA, RUN)).head_cursor;
  await waitDocCount(page, head);
  const { sequence } = await publishEvent(serverA, RUN, 'run.note', { text: 'live from e2e', big: 9007199254740993 });
  assert.equal(sequence, head + 1);
  await page.locator(`#docs tr[data-key="${sequence}"]`).waitFor({ timeout: 10_000 });
  const doc = await page.evaluate(([t, k]) => window.khala.client.get(t, k), [RUN, String(sequence)]);
  assert.equal(doc.version, sequence);
  assert.equal(doc.value.kind, 'run.note');
  assert.equal(doc.value.payload.text, 'live from e2e');
  assert.match(await page.locator(`#docs tr[data-key="${sequence}"] td.value`).textContent(), /live from e2e/);
  assert.equal((await topicStatus(page, RUN)).watermark, sequence);
  assert.deepEqual(page.errors, []);
  // IndexedDB kept everything: the reloaded page's first poll resumes after the watermark.
  await page.close();
  await publishEvent(serverA, RUN, 'run.note', { text: 'while closed' });
  page = await openFanoutShell(ctx, serverA, { topics: RUN, dialect: 'fanout', db: 'f-live' });
  await page.locator(`#docs tr[data-key="${sequence + 1}"]`).waitFor({ timeout: 10_000 });
  const p = await polls(page);
  assert.equal(afterSeq(p[0].url), sequence, 'resumed from the persisted watermark, not 0');
  assert.equal(await docCount(page), sequence + 1);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('fanout poll cadence: no two polls of a topic closer than 250 ms, the server rate-limits none', async () => {
  const ctx = await browser.newContext();
  const before = await fanoutMetrics(serverA);
  // The fastest cadence the options allow by default (poll period = minimum spacing, 300 ms).
  const page = await openFanoutShell(ctx, serverA, { topics: RUN, dialect: 'fanout', db: 'f-cadence', poll: '300' });
  await page.waitForTimeout(2_500);
  // A few live events while polling.
  for (let i = 0; i < 3; i++) {
    await publishEvent(serverA, RUN, 'run.step', { cadence: i });
    await page.waitForTimeout(150);
  }
  const head = (await events(serverA, RUN)).head_cursor;
  await waitDocCount(page, head);
  await page.waitForTimeout(500);
  const p = await polls(page);
  assert.ok(p.length >= 6, `${p.length} polls in ~3.5 s`);
  const gaps = p.slice(1).map((x, i) => x.t - p[i].t);
  const min = Math.min(...gaps);
  assert.ok(min >= 250, `closest polls ${min.toFixed(1)} ms apart (gaps ${gaps.map((g) => g.toFixed(0)).join(',')})`);
  const after = await fanoutMetrics(serverA);
  assert.equal(after.rateLimited - before.rateLimited, 0, 'no 429 from the server');
  assert.ok(after.polls - before.polls >= p.length, `server saw ${after.polls - before.polls} polls, page sent ${p.length}`);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('fanout truncation: events evicted while paused come back as one truncated change with exactly that range; sync continues to the head', async () => {
  const ctx = await browser.newContext();
  const topic = 'run:r2:events';
  for (let i = 1; i <= 20; i++) await publishEvent(serverB, topic, 'run.step', { step: i });
  // Chromium logs the 410 answer (stale cursor) as a failed resource load.
  const page = await openFanoutShell(
    ctx, serverB, { topics: topic, dialect: 'fanout', db: 'f-trunc', poll: '300' }, /status of 410/,
  );
  await waitDocCount(page, 20);
  // A second tab on the same database follows the first (multi-tab relay): it must receive the
  // truncated change and the "poll" transport unchanged.
  const follower = await openFanoutShell(ctx, serverB, { topics: topic, dialect: 'fanout', db: 'f-trunc', poll: '300' });
  assert.equal(await page.evaluate(() => window.khala.client.role), 'leader');
  assert.equal(await follower.evaluate(() => window.khala.client.role), 'follower');
  assert.equal(await follower.evaluate(() => window.khala.client.status().transport), 'poll');
  await page.evaluate(() => window.khala.client.pause());
  await page.waitForFunction(() => window.khala.client.status().state === 'paused');
  await page.waitForTimeout(500); // a poll in flight when pausing has landed by now
  const w = (await topicStatus(page, topic)).watermark;
  assert.equal(w, 20);
  const before = await fanoutMetrics(serverB);
  // 100 more than the client has: the ring (64) keeps 57..120, evicting 21..56 unseen.
  for (let i = 21; i <= 120; i++) await publishEvent(serverB, topic, 'run.step', { step: i });
  const srv = await events(serverB, topic);
  assert.equal(srv.head_cursor, 120);
  assert.equal(srv.oldest_available_cursor, 56);
  await page.evaluate(() => window.khala.client.resume());
  await page.waitForFunction(() => window.khala.truncations.length > 0, null, { timeout: 15_000 });
  await waitDocCount(page, 20 + 64);
  await waitLive(page);
  assert.deepEqual(await page.evaluate(() => window.khala.truncations), [{ from: w + 1, to: 56 }]);
  assert.match(await page.locator('#truncated').textContent(), /^21\.\.56$/);
  const log = await page.evaluate(() => window.khala.log);
  const ti = log.indexOf('truncated 21..56');
  assert.ok(ti >= 0, 'truncation in the change log');
  assert.ok(log.slice(ti + 1).some((l) => l.startsWith('upsert 57 ')), 'then the retained events from 57');
  const docs = await page.evaluate((t) => window.khala.client.list(t), topic);
  const keys = docs.map((d) => Number(d.key)).sort((a, b) => a - b);
  const expected = [...Array(20).keys()].map((i) => i + 1).concat([...Array(64).keys()].map((i) => i + 57));
  assert.deepEqual(keys, expected, 'evicted events are not invented; the rest is there once');
  await assertStoreMatchesServer(page, serverB, topic);
  assert.equal((await topicStatus(page, topic)).watermark, 120);
  // Sync continues: a new event arrives live.
  const { sequence } = await publishEvent(serverB, topic, 'run.finished', null);
  assert.equal(sequence, 121);
  await page.locator('#docs tr[data-key="121"]').waitFor({ timeout: 10_000 });
  const after = await fanoutMetrics(serverB);
  assert.equal(after.stale - before.stale, 1, 'one 410 stale_cursor');
  assert.equal(after.rateLimited - before.rateLimited, 0);
  assert.equal(await page.evaluate(() => window.khala.truncations.length), 1, 'reported once');
  await follower.locator('#docs tr[data-key="121"]').waitFor({ timeout: 10_000 });
  assert.deepEqual(await follower.evaluate(() => window.khala.truncations), [{ from: 21, to: 56 }], 'relayed to the follower');
  assert.equal(await follower.evaluate(() => window.khala.client.status().transport), 'poll');
  assert.equal(await docCount(follower), 20 + 64 + 1);
  assert.deepEqual(follower.errors, []);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('auto dialect against a server without a Phoenix socket: the 404 switches it to polling and it syncs', async () => {
  const ctx = await browser.newContext();
  const before = await fanoutMetrics(serverA);
  // No `dialect` parameter: the client's default, auto. The token is a syncToken the page
  // fetched itself. Chromium logs the refused WebSocket and the 404 probe as console errors.
  const page = await openFanoutShell(
    ctx, serverA, { topics: RUN, db: 'f-auto', auth: 'token' },
    /WebSocket connection to .* failed|status of 404/,
  );
  const head = (await events(serverA, RUN)).head_cursor;
  await waitDocCount(page, head);
  const s = await page.evaluate(() => window.khala.client.status());
  assert.equal(s.transport, 'poll');
  assert.equal(s.state, 'connected');
  assert.equal(s.topics[0].watermark, head);
  await assertStoreMatchesServer(page, serverA, RUN);
  const { sequence } = await publishEvent(serverA, RUN, 'run.step', { auto: true });
  await page.locator(`#docs tr[data-key="${sequence}"]`).waitFor({ timeout: 10_000 });
  const after = await fanoutMetrics(serverA);
  assert.ok(after.polls > before.polls);
  assert.equal(after.rateLimited - before.rateLimited, 0);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('auto dialect against a Phoenix server stays on the Phoenix socket (no probe answer 404)', async () => {
  const ctx = await browser.newContext();
  const before = await fanoutMetrics(serverB);
  const page = await openFanoutShell(ctx, serverB, { topics: 'runtime.run_summaries', db: 'f-auto-p' });
  await waitDocCount(page, (await serverB.state('runtime.run_summaries')).docs.length);
  assert.equal(await page.evaluate(() => window.khala.client.status().transport), 'websocket');
  const after = await fanoutMetrics(serverB);
  assert.equal(after.polls - before.polls, 0, 'no fanout polls');
  assert.deepEqual(page.errors, []);
  await ctx.close();
});
