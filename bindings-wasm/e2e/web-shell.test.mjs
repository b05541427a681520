// End-to-end: the web shell page in headless Chromium against the real dev server on loopback.
// Every test uses its own IndexedDB name; server counters are compared as deltas.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { chromium } from 'playwright-core';
import path from 'node:path';
import {
  TOPIC, repoRoot, startServer, launchBrowser, openShell, waitLive, clientMetrics,
} from './harness.mjs';

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

const docRow = (page, key) => page.locator(`#docs tr[data-key="${key}"]`);

test('bootstrap: a fresh page loads the topic by snapshot and shows every document', async () => {
  const ctx = await browser.newContext();
  const before = await server.metrics();
  const page = await openShell(ctx, server, { db: 'e2e-bootstrap' });
  const state = await server.state();
  // Everything the server holds is in the DOM (publishes racing in are fine: >=).
  await page.waitForFunction((n) => Number(document.getElementById('doc-count').textContent) >= n, state.docs.length);
  for (const d of state.docs.slice(0, 5)) {
    await docRow(page, d.doc_key).waitFor();
  }
  const m = await clientMetrics(page);
  assert.equal(m.snapshots, 1, 'one snapshot on first load');
  assert.ok(m.snapshotDocs >= state.docs.length, `snapshotDocs ${m.snapshotDocs}`);
  const after = await server.metrics();
  assert.equal(after.snapshots_started - before.snapshots_started, 1);
  assert.equal(await page.evaluate(() => window.khala.client.persistent), true);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('live change: a publish appears in the DOM; screenshot after live updates', async () => {
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await openShell(ctx, server, { db: 'e2e-live' });
  const keys = ['runtime/run_summary:e2e-live-1', 'runtime/run_summary:e2e-live-2', 'runtime/run_summary:e2e-live-3'];
  for (const [i, k] of keys.entries()) {
    await server.publish(k, { run_id: `e2e-live-${i + 1}`, status: 'running', title: `live update ${i + 1}` });
  }
  await server.publish(keys[0], { run_id: 'e2e-live-1', status: 'succeeded', title: 'live update 1 (done)' });
  for (const k of keys) await docRow(page, k).waitFor();
  await page.waitForFunction((k) => document.querySelector(`#docs tr[data-key="${k}"]`)?.dataset.version === '2', keys[0]);
  const text = await docRow(page, keys[0]).locator('td.value').textContent();
  assert.match(text, /"status":"succeeded"/);
  assert.match(text, /live update 1 \(done\)/);
  // The store agrees with the DOM.
  const stored = await page.evaluate((k) => window.khala.client.get('runtime.run_summaries', k), keys[0]);
  assert.equal(stored.version, 2);
  assert.equal(stored.value.status, 'succeeded');
  assert.equal(await page.locator('#state').textContent(), 'connected');
  const m = await clientMetrics(page);
  assert.ok(m.updatesApplied >= 4, `updatesApplied ${m.updatesApplied}`);
  mkdirSync(path.join(repoRoot, 'target'), { recursive: true });
  const png = path.join(repoRoot, 'target/web-shell-live.png');
  await page.screenshot({ path: png, fullPage: true });
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('reload: the page resumes from the persisted watermark without a snapshot', async () => {
  const ctx = await browser.newContext();
  let page = await openShell(ctx, server, { db: 'e2e-reload' });
  assert.equal((await clientMetrics(page)).snapshots, 1);
  const watermark = await page.evaluate(() => window.khala.client.status().topics[0].watermark);
  await page.close();
  // Changes made while no page is open arrive by replay on the next load.
  await server.publish('runtime/run_summary:e2e-reload', { run_id: 'e2e-reload', status: 'queued' });
  const before = await server.metrics();
  page = await openShell(ctx, server, { db: 'e2e-reload' });
  await docRow(page, 'runtime/run_summary:e2e-reload').waitFor();
  const m = await clientMetrics(page);
  assert.equal(m.snapshots, 0, 'no snapshot after reload');
  assert.equal(m.staleCursors, 0);
  assert.ok(m.updatesApplied >= 1, `updatesApplied ${m.updatesApplied}`);
  const after = await server.metrics();
  assert.equal(after.snapshots_started - before.snapshots_started, 0, 'server served no snapshot');
  assert.equal(after.subscribes_with_resume - before.subscribes_with_resume, 1, 'subscribed with resume_after');
  const wm = await page.evaluate(() => window.khala.client.status().topics[0].watermark);
  assert.ok(wm > watermark, `watermark ${watermark} -> ${wm}`);
  // Same page object, real reload.
  await page.reload();
  await waitLive(page);
  assert.equal((await clientMetrics(page)).snapshots, 0, 'no snapshot after page.reload()');
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('persist=0: the memory store bootstraps again after a reload (the contrast to IndexedDB)', async () => {
  const ctx = await browser.newContext();
  const page = await openShell(ctx, server, { db: 'e2e-memory', persist: '0' });
  assert.equal(await page.evaluate(() => window.khala.client.persistent), false);
  assert.equal(await page.locator('#store').textContent(), 'memory');
  assert.equal((await clientMetrics(page)).snapshots, 1);
  await page.reload();
  await waitLive(page);
  assert.equal((await clientMetrics(page)).snapshots, 1, 'nothing persisted: a new snapshot');
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('browser restart: a persistent profile keeps documents and watermark (no snapshot)', async () => {
  const profile = mkdtempSync(path.join(os.tmpdir(), 'khala-profile-'));
  const launch = () => chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--disable-quic',
      '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    let ctx = await launch();
    let page = await openShell(ctx, server, { db: 'e2e-restart' });
    assert.equal((await clientMetrics(page)).snapshots, 1);
    await ctx.close(); // the whole browser process exits
    await server.publish('runtime/run_summary:e2e-restart', { run_id: 'e2e-restart', status: 'queued' });
    ctx = await launch();
    page = await openShell(ctx, server, { db: 'e2e-restart' });
    await docRow(page, 'runtime/run_summary:e2e-restart').waitFor();
    const m = await clientMetrics(page);
    assert.equal(m.snapshots, 0, 'resumed after a browser restart without a snapshot');
    assert.deepEqual(page.errors, []);
    await ctx.close();
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
});

test('forced stale cursor: exactly one snapshot, then live', async () => {
  const ctx = await browser.newContext();
  let page = await openShell(ctx, server, { db: 'e2e-stale' });
  await page.close();
  await server.faults({ force_stale: { topic: TOPIC, push: false, reason: 'retention_floor_breach' } });
  await server.publish('runtime/run_summary:e2e-stale', { run_id: 'e2e-stale', status: 'running' });
  const before = await server.metrics();
  page = await openShell(ctx, server, { db: 'e2e-stale' });
  await docRow(page, 'runtime/run_summary:e2e-stale').waitFor();
  const m = await clientMetrics(page);
  assert.equal(m.staleCursors, 1);
  assert.equal(m.snapshots, 1, 'exactly one snapshot');
  const after = await server.metrics();
  assert.equal(after.snapshots_started - before.snapshots_started, 1);
  assert.equal(after.stale_cursor_total - before.stale_cursor_total, 1);
  // Still exactly one a moment later (no loop).
  await page.waitForTimeout(500);
  assert.equal((await clientMetrics(page)).snapshots, 1);
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('token expiry: the server reauth push makes the page fetch a new token and keep syncing', async () => {
  const ctx = await browser.newContext();
  const page = await openShell(ctx, server, { db: 'e2e-reauth' });
  const before = await clientMetrics(page);
  await server.faults({ expire_tokens: true });
  await page.waitForFunction((n) => window.khala.client.metrics().tokensFetched > n, before.tokensFetched, { timeout: 20_000 });
  await waitLive(page);
  await server.publish('runtime/run_summary:e2e-reauth', { run_id: 'e2e-reauth', status: 'running' });
  await docRow(page, 'runtime/run_summary:e2e-reauth').waitFor();
  const m = await clientMetrics(page);
  assert.equal(m.snapshots, 1, 'no new snapshot for a token refresh');
  assert.deepEqual(page.errors, []);
  await ctx.close();
});

test('offline/online: going offline pauses, coming back reconnects and catches up', async () => {
  const ctx = await browser.newContext();
  const page = await openShell(ctx, server, { db: 'e2e-offline' });
  const connects = (await clientMetrics(page)).connects;
  await ctx.setOffline(true);
  await page.waitForFunction(() => window.khala.client.status().state === 'paused');
  await server.publish('runtime/run_summary:e2e-offline', { run_id: 'e2e-offline', status: 'running' });
  await page.waitForTimeout(300);
  assert.equal(await docRow(page, 'runtime/run_summary:e2e-offline').count(), 0, 'nothing arrives while offline');
  await ctx.setOffline(false);
  await waitLive(page);
  await docRow(page, 'runtime/run_summary:e2e-offline').waitFor();
  const m = await clientMetrics(page);
  assert.ok(m.connects > connects, `connects ${connects} -> ${m.connects}`);
  assert.equal(m.snapshots, 1, 'reconnect resumed without a new snapshot');
  // Only the expected fetch failure noise may appear; no page errors.
  assert.deepEqual(page.errors.filter((e) => !/ERR_INTERNET_DISCONNECTED/.test(e.message)), []);
  await ctx.close();
});
