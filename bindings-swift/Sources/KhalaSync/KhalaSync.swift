// KhalaSync: the idiomatic Swift surface over the uniffi bindings of the Rust SDK.
//
// Thin glue only: every call forwards to `KhalaSyncCore` (Rust). Sync logic — tokens,
// watermarks, snapshots, retries — lives in Rust and nowhere else.

import Foundation
@_exported import KhalaSyncFFI

/// How the client authenticates the app to the token route (`POST /api/sync/token`).
public enum KhalaCredentials: Sendable {
    /// A fixed `Authorization: Bearer <token>` app credential.
    case bearer(String)
    /// Called before every token fetch (so it may refresh): returns the headers to send.
    /// Throwing reports an auth failure; syncing then waits for `resume()`.
    case provider(@Sendable () async throws -> [String: String])
}

/// Where the client keeps its local copy.
public enum KhalaStorage: Sendable, Equatable {
    /// `Application Support/KhalaSync/khala-sync.sqlite` (the app's Application Support
    /// directory on Apple platforms; Foundation's equivalent elsewhere).
    case applicationSupport
    /// A SQLite file at this path (created if missing).
    case file(String)
    /// Memory only: nothing survives a restart.
    case inMemory
}

/// What the client syncs, from where, and how.
public struct KhalaSyncConfig: Sendable {
    /// Server base URL (`https://…`).
    public var baseURL: String
    /// Topics to sync (e.g. `runtime.run_summaries`).
    public var topics: [String]
    /// The app's credentials for the token call.
    public var credentials: KhalaCredentials
    /// Local storage; defaults to Application Support.
    public var storage: KhalaStorage
    /// SDK options; every `nil` keeps the production default.
    public var options: SyncOptions

    /// A configuration; `storage` defaults to Application Support, `options` to production
    /// defaults.
    public init(
        baseURL: String,
        topics: [String],
        credentials: KhalaCredentials,
        storage: KhalaStorage = .applicationSupport,
        options: SyncOptions = SyncOptions()
    ) {
        self.baseURL = baseURL
        self.topics = topics
        self.credentials = credentials
        self.storage = storage
        self.options = options
    }
}

/// Adapts `KhalaCredentials` to the Rust side's `CredentialsProvider`.
private final class CredentialsAdapter: CredentialsProvider {
    private let credentials: KhalaCredentials

    init(_ credentials: KhalaCredentials) {
        self.credentials = credentials
    }

    func headers() async throws -> [Header] {
        switch credentials {
        case .bearer(let token):
            return [Header(name: "Authorization", value: "Bearer \(token)")]
        case .provider(let fetch):
            let headers: [String: String]
            do {
                headers = try await fetch()
            } catch let error as CredentialsError {
                throw error
            } catch {
                throw CredentialsError.Unavailable(message: String(describing: type(of: error)))
            }
            return headers.sorted { $0.key < $1.key }.map { Header(name: $0.key, value: $0.value) }
        }
    }
}

/// A khala-sync client: keeps a local copy of server topics in step with the server.
///
/// ```swift
/// let client = try KhalaSyncClient(config: KhalaSyncConfig(
///     baseURL: "https://sync.example.com",
///     topics: ["runtime.run_summaries"],
///     credentials: .bearer(appSessionToken)))
/// try await client.start()
/// for await change in try client.changes(topic: "runtime.run_summaries") { … }
/// ```
public final class KhalaSyncClient: Sendable {
    private let core: KhalaSyncCore

    /// Validates the configuration and opens the store; does not touch the network.
    /// Throws `KhalaSyncError` (e.g. `.Config` for a bad URL or topic name).
    public init(config: KhalaSyncConfig) throws {
        let databasePath: String?
        switch config.storage {
        case .inMemory:
            databasePath = nil
        case .file(let path):
            databasePath = path
        case .applicationSupport:
            databasePath = try Self.applicationSupportDatabasePath()
        }
        core = try KhalaSyncCore(
            config: ClientConfig(
                baseUrl: config.baseURL,
                topics: config.topics,
                databasePath: databasePath,
                options: config.options
            ),
            credentials: CredentialsAdapter(config.credentials)
        )
    }

    private static func applicationSupportDatabasePath() throws -> String {
        do {
            let base = try FileManager.default.url(
                for: .applicationSupportDirectory, in: .userDomainMask,
                appropriateFor: nil, create: true
            )
            let dir = base.appendingPathComponent("KhalaSync", isDirectory: true)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            return dir.appendingPathComponent("khala-sync.sqlite").path
        } catch {
            throw KhalaSyncError.Config(
                message: "cannot create the Application Support directory: \(error.localizedDescription)")
        }
    }

    /// Starts syncing in the background. A second call is a no-op.
    public func start() async throws {
        try await core.start()
    }

    /// Pauses network activity (app backgrounded). Local reads keep working.
    public func pause() async {
        await core.pause()
    }

    /// Resumes after `pause()`, or after an auth failure once credentials are fixed.
    public func resume() async {
        await core.resume()
    }

    /// Tells the client the network changed (reachability): reconnect now, backoff reset.
    public func networkChanged() {
        core.networkChanged()
    }

    /// Stops syncing; a batch being committed finishes or rolls back first.
    public func shutdown() async {
        await core.shutdown()
    }

    /// The current status.
    public var status: SyncStatus {
        core.currentStatus()
    }

    /// Counters (updates applied, snapshots, reconnects, …).
    public var metrics: Metrics {
        core.metrics()
    }

    /// The configured topics.
    public var topics: [String] {
        core.topics()
    }

    /// Statuses: the current one first, then every change (a slow reader may skip
    /// intermediate ones; the latest is always delivered). Each access is a new listener,
    /// released when the iterating task ends or is cancelled.
    public var statusUpdates: AsyncStream<SyncStatus> {
        let subscription = core.subscribeStatus()
        return Self.stream(next: { await subscription.next() }, close: { subscription.close() })
    }

    /// Committed changes of `topic`, from now on, in commit order. The listener is
    /// registered immediately (before iteration starts) and released when the iterating
    /// task ends or is cancelled. Throws `.Config` for an invalid topic name.
    public func changes(topic: String) throws -> AsyncStream<Change> {
        let subscription = try core.subscribeChanges(topicName: topic)
        return Self.stream(next: { await subscription.next() }, close: { subscription.close() })
    }

    /// One stored document, or `nil`.
    public func document(topic: String, key: String) async throws -> Doc? {
        try await core.document(topicName: topic, key: key)
    }

    /// Every stored document of `topic`, sorted by key.
    public func documents(topic: String) async throws -> [Doc] {
        try await core.documents(topicName: topic)
    }

    /// Listeners (`statusUpdates`/`changes`) currently registered in Rust.
    public var activeListeners: Int {
        Int(core.activeListeners())
    }

    /// Change receivers registered in the Rust client itself.
    public var changeListenerCount: Int {
        Int(core.changeListenerCount())
    }

    /// Turns a Rust subscription into an `AsyncStream` that pulls one item per `next()`.
    /// Cancelling the iterating task closes the Rust listener (a pending `next()` returns
    /// `nil`); breaking out of the loop drops the stream, whose closures hold the only
    /// reference to the subscription, so the Rust listener is freed with it.
    private static func stream<T: Sendable>(
        next: @escaping @Sendable () async -> T?,
        close: @escaping @Sendable () -> Void
    ) -> AsyncStream<T> {
        AsyncStream(unfolding: next, onCancel: close)
    }
}

extension KhalaSyncError {
    /// The HTTP status of auth/forbidden/HTTP errors.
    public var httpStatus: UInt16? {
        switch self {
        case .Auth(let status, _, _), .Forbidden(let status, _, _), .Http(_, let status, _, _):
            return status
        default:
            return nil
        }
    }
}

/// The SDK version (the Rust crate's).
public var khalaSyncSDKVersion: String {
    khalaSyncVersion()
}
