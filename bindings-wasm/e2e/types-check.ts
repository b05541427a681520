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
  // @ts-expect-error baseUrl is required
  await KhalaSync.open({ topics: [], credentials: async () => ({}) });
  // @ts-expect-error credentials must return headers
  await KhalaSync.open({ baseUrl: 'x', topics: [], credentials: () => 42 });
}
