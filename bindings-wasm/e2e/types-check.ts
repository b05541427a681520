// Compile-only check of the hand-written index.d.ts (`tsc --noEmit --strict`): the README's
// quick start and every documented member type-check; misuse does not.
import { KhalaSync, type Change, type KhalaSyncError, type SyncStatus } from '../pkg/index.js';

interface Run { status: string; title?: string }

export async function quickStart(): Promise<void> {
  const client = await KhalaSync.open({
    baseUrl: 'https://sync.example.com',
    topics: ['runtime.run_summaries'],
    credentials: async () => ({ Authorization: 'Bearer app-session' }),
    dbName: 'khala',
  });
  const off: () => void = client.onStatus((s: SyncStatus) => console.log(s.state, s.topics[0]?.phase));
  client.start();
  for await (const change of client.changes<Run>('runtime.run_summaries')) {
    const c: Change<Run> = change;
    if (c.type === 'upsert') console.log(c.key, c.value.status, c.version);
    if (c.type === 'bootstrapped') console.log(c.docs);
    break;
  }
  const doc = await client.get<Run>('runtime.run_summaries', 'k');
  if (doc) console.log(doc.value.status, doc.watermark, doc.verified);
  const all = await client.list<Run>('runtime.run_summaries');
  console.log(all.length, client.metrics().snapshots, client.persistent, client.topics);
  const role: 'leader' | 'follower' | 'standalone' = client.role;
  console.log(role, client.status().role);
  // @ts-expect-error role is read-only
  client.role = 'leader';
  // @ts-expect-error multiTab is a boolean
  await KhalaSync.open({ baseUrl: 'x', topics: [], credentials: async () => ({}), multiTab: 'yes' });
  off();
  try {
    await client.close();
  } catch (e) {
    const err = e as KhalaSyncError;
    console.log(err.code, err.retryable);
  }
  // Dialect F (runtime fanout) and the token sources besides `credentials`.
  const fan = await KhalaSync.open({
    baseUrl: 'https://sync.example.com',
    topics: ['run:r1:events'],
    dialect: 'fanout',
    pollIntervalMs: 1000,
    pollMinIntervalMs: 300,
    syncToken: 'eyJ...',
  });
  const t: 'websocket' | 'poll' | (string & {}) = fan.status().transport;
  console.log(t);
  for await (const c of fan.changes('run:r1:events')) {
    if (c.type === 'truncated') console.log(c.from, c.to);
    break;
  }
  await KhalaSync.open({ baseUrl: 'x', topics: [], dialect: 'auto', tokenProvider: async () => 'jwt' });
  await KhalaSync.open({ baseUrl: 'x', topics: [], tokenProvider: () => ({ token: 'jwt', expiresIn: 60 }) });
  await KhalaSync.open({ baseUrl: 'x', topics: [], credentials: async () => ({}), tokenUrl: 'https://a/token' });
  // @ts-expect-error exactly one token source
  await KhalaSync.open({ baseUrl: 'x', topics: [], credentials: async () => ({}), syncToken: 'jwt' });
  // @ts-expect-error a token source is required
  await KhalaSync.open({ baseUrl: 'x', topics: [] });
  // @ts-expect-error tokenUrl only with credentials
  await KhalaSync.open({ baseUrl: 'x', topics: [], syncToken: 'jwt', tokenUrl: 'https://a/token' });
  // @ts-expect-error unknown dialect
  await KhalaSync.open({ baseUrl: 'x', topics: [], syncToken: 'jwt', dialect: 'grpc' });
  // @ts-expect-error tokenProvider returns a token
  await KhalaSync.open({ baseUrl: 'x', topics: [], tokenProvider: async () => 42 });
  // @ts-expect-error baseUrl is required
  await KhalaSync.open({ topics: [], credentials: async () => ({}) });
  // @ts-expect-error credentials must return headers
  await KhalaSync.open({ baseUrl: 'x', topics: [], credentials: () => 42 });
}
