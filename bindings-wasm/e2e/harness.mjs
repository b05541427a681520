// Shared harness for the Chromium end-to-end tests: starts the real dev server (loopback,
// ephemeral port) serving the repository under /web/, launches Debian's headless Chromium via
// playwright-core, and offers small helpers over the dev server's control API.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '../..');
export const TOPIC = 'runtime.run_summaries';

export async function startServer(args = []) {
  const bin = process.env.KHALA_DEV_SERVER ?? path.join(repoRoot, 'target/debug/khala-dev-server');
  const proc = spawn(bin, ['--port', '0', '--seed-docs', '40', ...args], {
    env: { ...process.env, KHALA_DEV_WEB_ROOT: repoRoot, RUST_LOG: 'warn' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  const base = await new Promise((resolve, reject) => {
    proc.on('exit', (code) => reject(new Error(`dev server exited early (${code})`)));
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/khala dev server: (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) resolve(m[1]);
    });
  });
  proc.removeAllListeners('exit');
  const server = {
    base,
    async stop() {
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    },
    async json(method, route, body) {
      const r = await fetch(base + route, {
        method,
        headers: body ? { 'content-type': 'application/json' } : {},
        body: body ? JSON.stringify(body) : undefined,
      });
      if (!r.ok) throw new Error(`${method} ${route}: ${r.status} ${await r.text()}`);
      return r.json();
    },
    publish(key, payload, topic = TOPIC) {
      return server.json('POST', '/dev/publish', { topic, doc_key: key, payload });
    },
    faults(f) {
      return server.json('POST', '/dev/faults', f);
    },
    metrics() {
      return server.json('GET', '/internal/v1/khala/fanout/metrics');
    },
    state(topic = TOPIC) {
      return server.json('GET', `/dev/state/${encodeURIComponent(topic)}`);
    },
    shellUrl(params = {}) {
      const q = new URLSearchParams(params).toString();
      return `${base}/web/examples/web-shell/index.html${q ? `?${q}` : ''}`;
    },
  };
  return server;
}

export function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--disable-quic',
      '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Opens the web shell and waits until every topic is live. Page errors fail the test. */
export async function openShell(context, server, params) {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(new Error(m.text()));
  });
  page.errors = errors;
  await page.goto(server.shellUrl(params));
  await waitLive(page);
  return page;
}

export async function waitLive(page, timeout = 20_000) {
  await page.waitForFunction(
    () => window.khala && window.khala.client.status().live && window.khala.client.status().state === 'connected',
    null,
    { timeout },
  );
}

export function clientMetrics(page) {
  return page.evaluate(() => window.khala.client.metrics());
}
