// Hand-checked types of the khala-sync web package (the wasm-bindgen class underneath is
// typed in web/khala_sync_wasm.d.ts; this is the public surface of index.js / node.mjs).

/** Stable error codes, identical to `khala_sync::SyncError::code()` in Rust and Swift. */
export type KhalaSyncErrorCode =
  | 'auth_failed' | 'forbidden' | 'invalid_request' | 'topic_forbidden' | 'bad_subscription'
  | 'upgrade_required' | 'stale_loop' | 'transport' | 'http_error' | 'server_error'
  | 'invalid_config' | 'shutdown'
  // ProtocolError::code()
  | 'frame_too_large' | 'malformed_frame' | 'unknown_event' | 'invalid_payload_hash'
  // StoreError::code()
  | 'store_corrupt' | 'store_foreign' | 'store_schema_too_new' | 'store_disk_full'
  | 'store_read_only' | 'store_busy' | 'store_watermark_conflict' | 'store_stale_snapshot'
  | 'store_closed' | 'store_error'
  | (string & {});

/** Every error the package throws or rejects with. */
export interface KhalaSyncError extends Error {
  name: 'KhalaSyncError';
  code: KhalaSyncErrorCode;
  /** True when the SDK retries on its own; false when the app must act. */
  retryable: boolean;
}

/** Error info inside a status object. */
export interface ErrorInfo {
  code: KhalaSyncErrorCode;
  message: string;
  retryable: boolean;
}

/** Headers sent with `POST /api/sync/token`, e.g. `{ Authorization: 'Bearer …' }`. */
export type Credentials = Record<string, string>;

/** What `tokenProvider` returns: a JWT, or a JWT with its lifetime in seconds. */
export type ProvidedToken = string | { token: string; expiresIn?: number };

export type Dialect = 'auto' | 'phoenix' | 'fanout';

/**
 * Where sync tokens come from: exactly one of `credentials` (the token route), `syncToken` or
 * `tokenProvider`. Any other combination is rejected with `invalid_config`.
 */
export type TokenOptions =
  | {
      /** The app's credentials for the token route; called before every token fetch. */
      credentials: () => Credentials | Promise<Credentials>;
      /** Token route URL when it is not `<baseUrl>/api/sync/token`. */
      tokenUrl?: string;
      syncToken?: never;
      tokenProvider?: never;
    }
  | {
      /** A sync JWT the app already holds, used as is (no token route). */
      syncToken: string;
      credentials?: never;
      tokenProvider?: never;
      tokenUrl?: never;
    }
  | {
      /**
       * Returns a sync JWT (or `{ token, expiresIn }`, seconds) whenever the client needs one
       * (no token route). Without `expiresIn` the JWT's `exp` sets the refresh time.
       */
      tokenProvider: () => ProvidedToken | Promise<ProvidedToken>;
      credentials?: never;
      syncToken?: never;
      tokenUrl?: never;
    };

export type KhalaSyncOptions = KhalaSyncCommonOptions & TokenOptions;

/** Every option except the token source (see `TokenOptions`). */
export interface KhalaSyncCommonOptions {
  /** Server base URL, `https://…` (plain http only to loopback unless allowed below). */
  baseUrl: string;
  /** Topics to sync, e.g. `['runtime.run_summaries']`. */
  topics: string[];
  /**
   * Wire dialect: `phoenix` (one socket for all topics), `fanout` (the runtime fanout, polled
   * over HTTP in browsers) or `auto` (Phoenix; switches to fanout when the server has no
   * Phoenix socket route). Default `auto`.
   */
  dialect?: Dialect;
  /** Fanout: poll period of a caught-up topic, ms. Default 1000. */
  pollIntervalMs?: number;
  /** Fanout: shortest time between two polls of one topic, ms (servers refuse < 250). Default 300. */
  pollMinIntervalMs?: number;
  /** IndexedDB database name. Default `"khala-sync"`. One database per (server, user, org). */
  dbName?: string;
  /** Persist to IndexedDB. Default: true where IndexedDB exists (browsers), else false (Node). */
  persist?: boolean;
  /** Kill switch: with false, start() does nothing. Default true. */
  enabled?: boolean;
  /** React to `online`/`offline`/`visibilitychange`/`freeze`/`resume`/`pagehide`/`pageshow`. Default true. */
  networkEvents?: boolean;
  /**
   * Share one connection among the tabs of this origin that use the same `dbName` (Web Locks
   * leader election, BroadcastChannel relay). Default true; only with a persistent store.
   */
  multiTab?: boolean;
  /** Allow http:// to non-loopback hosts (never in production). Default false. */
  allowInsecureNonLoopback?: boolean;
  replayBatchSize?: number;
  snapshotPageLimit?: number;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  heartbeatIntervalMs?: number;
  deadAfterMs?: number;
  maxFrameBytes?: number;
  jitterSeed?: number;
  tokenTtlSeconds?: number;
  scopes?: string[];
  deviceId?: string;
  clientName?: string;
  clientBuildId?: string;
}

export type ConnectionState =
  | 'idle' | 'authenticating' | 'connecting' | 'connected' | 'backoff' | 'paused'
  | 'auth_failed' | 'upgrade_required' | 'stopped';

export type TopicPhase = 'idle' | 'bootstrapping' | 'subscribing' | 'replaying' | 'live' | 'failed';

export interface TopicStatus {
  topic: string;
  phase: TopicPhase;
  /** Committed watermark. */
  watermark: number;
  /** Latest known server head. */
  head: number | null;
  /** 0..1 while replaying/bootstrapping. */
  replayProgress: number | null;
  /** Snapshot documents stored so far while bootstrapping. */
  snapshotDocs: number;
  resyncedFromWindow: boolean;
  error: ErrorInfo | null;
}

export interface SyncStatus {
  state: ConnectionState;
  /** `websocket` (Phoenix socket) or `poll` (fanout over HTTP). */
  transport: 'websocket' | 'poll' | (string & {});
  /** Every topic is live. */
  live: boolean;
  topics: TopicStatus[];
  lastError: ErrorInfo | null;
  /** `Date.now()`-based time of the next retry while in backoff. */
  nextRetryAt: number | null;
  /** This tab's part in multi-tab sharing (see `KhalaSyncClient.role`). */
  role: TabRole;
}

/**
 * `leader`: this tab holds the Web Lock, owns the connection and writes the store.
 * `follower`: another tab of the same origin and `dbName` leads; status, metrics and changes
 * are relayed from it, reads go to the shared store. `standalone`: this tab syncs on its own
 * (`multiTab: false`, `persist: false`, Node, or no Web Locks / BroadcastChannel).
 */
export type TabRole = 'leader' | 'follower' | 'standalone';

export type Change<T = unknown> =
  | { type: 'upsert'; topic: string; key: string; version: number; value: T; watermark: number }
  | { type: 'delete'; topic: string; key: string; watermark: number }
  /** The topic was replaced by a snapshot: re-read it with list(). */
  | { type: 'bootstrapped'; topic: string; watermark: number; docs: number }
  /**
   * Fanout event logs: the server no longer holds events `from..=to` (evicted before this
   * client read them); they are not in the store. Refetch them through the app's own APIs if
   * needed. Sync continues after `to`.
   */
  | { type: 'truncated'; topic: string; from: number; to: number };

export interface StoredDoc<T = unknown> {
  topic: string;
  key: string;
  version: number;
  value: T;
  /** Base64 sha256 of the canonical payload, or null. */
  payloadHash: string | null;
  watermark: number;
  verified: boolean;
}

export interface Metrics {
  updatesApplied: number;
  duplicatesSkipped: number;
  gaps: number;
  hashMismatches: number;
  unverifiedDocs: number;
  staleCursors: number;
  snapshots: number;
  snapshotDocs: number;
  reconnects: number;
  connects: number;
  tokensFetched: number;
  hydrations: number;
  slowConsumer: number;
  batchesCommitted: number;
  framesReceived: number;
  bytesReceived: number;
  decodeErrors: number;
  catchUpMs: number | null;
}

export interface KhalaSyncClient {
  start(): void;
  pause(): void;
  resume(): void;
  networkChanged(): void;
  status(): SyncStatus;
  /** Calls `cb` now and on every status change; returns an unsubscribe function. */
  onStatus(cb: (status: SyncStatus) => void): () => void;
  /** Committed changes of `topic` from now on; ends when the client is closed. */
  changes<T = unknown>(topic: string): AsyncIterableIterator<Change<T>>;
  get<T = unknown>(topic: string, key: string): Promise<StoredDoc<T> | null>;
  list<T = unknown>(topic: string): Promise<StoredDoc<T>[]>;
  /** Engine counters; a follower reports the leader's (as last relayed). */
  metrics(): Metrics;
  /** This tab's part in multi-tab sharing; followers may become leader later. */
  readonly role: TabRole;
  readonly topics: string[];
  readonly persistent: boolean;
  close(): Promise<void>;
}

export interface KhalaSyncStatic {
  open(options: KhalaSyncOptions): Promise<KhalaSyncClient>;
  /** Browser only: load the wasm from a custom URL/Response/Module before open(). */
  init(moduleOrPath?: unknown): Promise<unknown>;
}

export declare const KhalaSync: KhalaSyncStatic;
export default KhalaSync;
