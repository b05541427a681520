// The web shell: status, bootstrap progress and a live document list, all from the khala-sync
// package (no sync logic here). Query parameters: topics=a,b (default runtime.run_summaries),
// db=<IndexedDB name>, token=<app token> (default dev-app-token), persist=0 for memory only,
// tabs=0 to sync in this tab alone (no multi-tab sharing), backoff=<ms> (reconnect backoff base
// and cap), seed=<n> (backoff jitter seed), pkg=<URL of the package's index.js>,
// dialect=auto|phoenix|fanout (wire dialect; fanout topics look like run:<id>:events),
// poll=<ms> / pollmin=<ms> (fanout poll period / minimum spacing), auth=credentials|token|provider
// (how the client gets its sync JWT: the token route with the app token — default —, a
// `syncToken` this page fetched once, or a `tokenProvider` that fetches one on demand).
// Served by the dev server under /web/ (same origin).
const params = new URLSearchParams(location.search);
const pkgUrl = params.get('pkg') ?? '../../bindings-wasm/pkg/index.js';
const { KhalaSync } = await import(pkgUrl);

const topics = (params.get('topics') ?? 'runtime.run_summaries').split(',').filter(Boolean);
const shown = topics[0];
const appToken = params.get('token') ?? 'dev-app-token';
const $ = (id) => document.getElementById(id);

const docs = new Map(); // key -> {version, watermark, value}
// Event logs (dialect F) use sequences as keys: sort them as numbers.
const byKey = new Intl.Collator('en', { numeric: true }).compare;

/** The page's own call of the token route (auth=token / auth=provider): a sync JWT. */
async function fetchSyncToken() {
  const r = await fetch('/api/sync/token', {
    method: 'POST',
    headers: { Authorization: `Bearer ${appToken}`, 'content-type': 'application/json' },
    body: '{}',
  });
  if (!r.ok) throw new Error(`token route answered ${r.status}`);
  const { data } = await r.json();
  return { token: data.token, expiresIn: data.expires_in };
}

async function tokenOptions() {
  switch (params.get('auth') ?? 'credentials') {
    case 'token':
      return { syncToken: (await fetchSyncToken()).token };
    case 'provider':
      return { tokenProvider: fetchSyncToken };
    default:
      return { credentials: async () => ({ Authorization: `Bearer ${appToken}` }) };
  }
}

function renderStatus(s) {
  $('state').textContent = s.state;
  $('state').dataset.state = s.state;
  $('role').textContent = s.role;
  $('role').dataset.role = s.role;
  $('transport').textContent = s.transport;
  $('error').textContent = s.lastError ? `${s.lastError.code}: ${s.lastError.message}` : '';
  const body = $('topics').tBodies[0];
  body.replaceChildren(...s.topics.map((t) => {
    const tr = document.createElement('tr');
    tr.dataset.topic = t.topic;
    tr.dataset.phase = t.phase;
    const progress = t.phase === 'bootstrapping'
      ? `snapshot: ${t.snapshotDocs} docs`
      : t.replayProgress != null ? `<progress max="1" value="${t.replayProgress}"></progress>` : '';
    tr.innerHTML = `<td>${esc(t.topic)}</td><td class="phase">${t.phase}</td>` +
      `<td class="watermark">${t.watermark}</td><td>${t.head ?? '-'}</td><td>${progress}</td>`;
    return tr;
  }));
}

function esc(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
}

function renderDocs() {
  const rows = [...docs.entries()].sort(([a], [b]) => byKey(a, b));
  $('doc-count').textContent = String(rows.length);
  $('docs').tBodies[0].replaceChildren(...rows.map(([key, d]) => {
    const tr = document.createElement('tr');
    tr.dataset.key = key;
    tr.dataset.version = String(d.version);
    tr.innerHTML = `<td>${esc(key)}</td><td>${d.version}</td><td>${d.watermark}</td>` +
      `<td class="value">${esc(JSON.stringify(d.value))}</td>`;
    return tr;
  }));
  $('metrics').textContent = JSON.stringify(client.metrics());
}

async function reload() {
  docs.clear();
  for (const d of await client.list(shown)) docs.set(d.key, d);
  renderDocs();
}

const client = await KhalaSync.open({
  baseUrl: location.origin,
  topics,
  ...(await tokenOptions()),
  ...(params.has('dialect') ? { dialect: params.get('dialect') } : {}),
  ...(params.has('poll') ? { pollIntervalMs: Number(params.get('poll')) } : {}),
  ...(params.has('pollmin') ? { pollMinIntervalMs: Number(params.get('pollmin')) } : {}),
  dbName: params.get('db') ?? 'khala-web-shell',
  persist: params.get('persist') !== '0',
  multiTab: params.get('tabs') !== '0',
  ...(params.has('seed') ? { jitterSeed: Number(params.get('seed')) } : {}),
  ...(params.has('backoff') ? { backoffBaseMs: Number(params.get('backoff')), backoffCapMs: Number(params.get('backoff')) } : {}),
});
$('store').textContent = client.persistent ? 'IndexedDB' : 'memory';
$('doc-topic').textContent = shown;
client.onStatus(renderStatus);
await reload(); // what a previous session persisted is visible before any network
// log: every change seen, in order; truncations: the `truncated` changes (fanout event logs).
window.khala = { client, docs, changes: 0, log: [], truncations: [] };
const changes = client.changes(shown);
client.start();
for await (const c of changes) {
  window.khala.changes += 1;
  if (c.type === 'truncated') {
    // The server evicted events from..=to before this client read them (not in the store).
    window.khala.truncations.push({ from: c.from, to: c.to });
    window.khala.log.push(`truncated ${c.from}..${c.to}`);
    $('last-change').textContent = `truncated ${c.from}..${c.to}`;
    $('truncated').textContent = window.khala.truncations.map((t) => `${t.from}..${t.to}`).join(', ');
    continue;
  }
  window.khala.log.push(`${c.type} ${c.key ?? ''} v${c.version ?? '-'} @${c.watermark}`);
  $('last-change').textContent = `${c.type} ${c.key ?? ''} @${c.watermark}`;
  if (c.type === 'upsert') docs.set(c.key, c);
  else if (c.type === 'delete') docs.delete(c.key);
  else if (c.type === 'bootstrapped') { await reload(); continue; }
  renderDocs();
}
