// The KhalaSync package against a real khala-dev-server process (one per test, fresh state),
// over real loopback sockets, with real SQLite files. Only the public package API is used.

import Foundation
import XCTest
import KhalaSync

let topic = "runtime.run_summaries"

/// Items a stream delivered, collected by a background task.
actor Collected<T: Sendable> {
    private(set) var items: [T] = []
    func append(_ item: T) { items.append(item) }
}

func collect<T: Sendable>(_ stream: AsyncStream<T>) -> (Collected<T>, Task<Void, Never>) {
    let collected = Collected<T>()
    let task = Task {
        for await item in stream { await collected.append(item) }
    }
    return (collected, task)
}

/// A thread-safe box for the credential provider's current token.
final class TokenBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: String
    private var calls = 0
    init(_ value: String) { self.value = value }
    func set(_ v: String) { lock.lock(); value = v; lock.unlock() }
    func get() -> String { lock.lock(); defer { lock.unlock() }; calls += 1; return value }
    var callCount: Int { lock.lock(); defer { lock.unlock() }; return calls }
}

struct AppSignedOut: Error {}

func makeClient(
    _ server: DevServer, storage: KhalaStorage,
    credentials: KhalaCredentials = .bearer(DevServer.appToken)
) throws -> KhalaSyncClient {
    var options = SyncOptions()
    options.backoffBaseMs = 50
    options.backoffCapMs = 500
    return try KhalaSyncClient(config: KhalaSyncConfig(
        baseURL: server.baseURL, topics: [topic], credentials: credentials,
        storage: storage, options: options
    ))
}

func upsertKeys(_ changes: [Change]) -> [String] {
    changes.compactMap { if case .upsert(_, let key, _, _, _) = $0 { return key } else { return nil } }
}

final class KhalaSyncTests: XCTestCase {

    /// start → snapshot bootstrap → live; a change published on the server arrives through
    /// the `AsyncStream` and is readable with `document(topic:key:)`.
    func testStartBootstrapsThenDeliversLiveChangeThroughAsyncStream() async throws {
        let server = try DevServer(seedDocs: 40)
        defer { server.stop() }
        let client = try makeClient(server, storage: .file(try temporaryDatabasePath()))
        let (changes, pump) = collect(try client.changes(topic: topic))
        defer { pump.cancel() }

        try await client.start()
        let live = try await waitForStatus(client, "all topics live") { $0.isLive }
        XCTAssertEqual(live.state, .connected)
        XCTAssertEqual(live.topics.map(\.topic), [topic])
        XCTAssertEqual(live.topics.first?.phase, .live)

        let docs = try await client.documents(topic: topic)
        XCTAssertFalse(docs.isEmpty, "the seeded documents were bootstrapped")
        XCTAssertGreaterThanOrEqual(client.metrics.snapshots, 1)
        try await eventually("a .bootstrapped change") {
            await changes.items.contains {
                if case .bootstrapped(let t, _, let n) = $0 { return t == topic && n == UInt64(docs.count) }
                return false
            }
        }

        let key = "runtime/run_summary:swift-live-1"
        let mark = try await server.publish(topic: topic, key: key, payloadJSON: #"{"status":"succeeded","n":1}"#)
        try await eventually("the live upsert through the AsyncStream", timeout: 10) {
            await changes.items.contains {
                if case .upsert(let t, let k, _, _, let w) = $0 { return t == topic && k == key && w == mark }
                return false
            }
        }
        let doc = try await client.document(topic: topic, key: key)
        XCTAssertEqual(doc?.payload, #"{"status":"succeeded","n":1}"#)
        XCTAssertEqual(doc?.watermark, mark)
        XCTAssertEqual(doc?.verified, true)
        XCTAssertEqual(client.status.topics.first?.watermark, mark)
        await client.shutdown()
        XCTAssertEqual(client.status.state, .stopped)
    }

    /// A second client on the same database resumes from the stored watermark: no second
    /// snapshot, and the update published while it was down arrives by replay.
    func testRestartResumesFromWatermarkWithoutSecondSnapshot() async throws {
        let server = try DevServer(seedDocs: 40)
        defer { server.stop() }
        let path = try temporaryDatabasePath()

        let first = try makeClient(server, storage: .file(path))
        try await first.start()
        _ = try await waitForStatus(first, "first run live") { $0.isLive }
        let mark1 = try await server.publish(topic: topic, key: "runtime/run_summary:r1", payloadJSON: #"{"v":1}"#)
        _ = try await waitForStatus(first, "first run at \(mark1)") { ($0.topics.first?.watermark ?? 0) >= mark1 }
        XCTAssertGreaterThanOrEqual(first.metrics.snapshots, 1, "the first run bootstraps")
        await first.shutdown()

        let mark2 = try await server.publish(topic: topic, key: "runtime/run_summary:r2", payloadJSON: #"{"v":2}"#)

        let second = try makeClient(server, storage: .file(path))
        let before = try await second.document(topic: topic, key: "runtime/run_summary:r1")
        XCTAssertEqual(before?.watermark, mark1, "committed data survives the restart")
        try await second.start()
        _ = try await waitForStatus(second, "second run at \(mark2)") {
            $0.isLive && ($0.topics.first?.watermark ?? 0) >= mark2
        }
        // Metrics are published by the driver right after the status; give them a moment.
        try await eventually("the missed update counted as replayed") {
            second.metrics.updatesApplied >= 1
        }
        let metrics = second.metrics
        XCTAssertEqual(metrics.snapshots, 0, "resumed from the watermark, no second snapshot")
        XCTAssertEqual(metrics.snapshotDocs, 0)
        // The server agrees: one snapshot in total (the first run's), and a resumed subscribe.
        let snapshotsServed = try await server.metric("snapshots_started")
        XCTAssertEqual(snapshotsServed, 1)
        let resumedSubscribes = try await server.metric("subscribes_with_resume")
        XCTAssertGreaterThanOrEqual(resumedSubscribes, 1)
        let doc = try await second.document(topic: topic, key: "runtime/run_summary:r2")
        XCTAssertEqual(doc?.payload, #"{"v":2}"#)
        await second.shutdown()
    }

    /// Refused app credentials surface as the typed `.Auth` error with the stable code, and
    /// `resume()` retries with the provider's fixed credentials.
    func testBadAppCredentialsGiveTypedAuthErrorThenResumeRecovers() async throws {
        let server = try DevServer(seedDocs: 4)
        defer { server.stop() }
        let token = TokenBox("not-the-app-token")
        let client = try makeClient(server, storage: .inMemory, credentials: .provider {
            ["Authorization": "Bearer \(token.get())"]
        })
        try await client.start()
        let failed = try await waitForStatus(client, "auth failed") { $0.state == .authFailed }
        guard case .Auth(let status, _, _)? = failed.lastError else {
            return XCTFail("expected .Auth, got \(String(describing: failed.lastError))")
        }
        XCTAssertEqual(status, 401)
        XCTAssertEqual(failed.lastError?.code(), "auth_failed")
        XCTAssertEqual(failed.lastError?.isRetryable(), false)
        XCTAssertEqual(failed.lastError?.httpStatus, 401)
        XCTAssertFalse(failed.lastError?.message().contains("not-the-app-token") ?? true,
                       "the credential never appears in the error")
        // No retry loop while auth is failed.
        let calls = token.callCount
        try await Task.sleep(nanoseconds: 500_000_000)
        XCTAssertEqual(token.callCount, calls)
        XCTAssertEqual(client.metrics.connects, 0)

        token.set(DevServer.appToken)
        await client.resume()
        _ = try await waitForStatus(client, "live after resume") { $0.isLive }
        await client.shutdown()
    }

    /// A provider that throws is reported as an auth failure (code `auth_failed`, server code
    /// `credentials_unavailable`), through the async foreign trait.
    func testThrowingCredentialProviderIsAnAuthError() async throws {
        let server = try DevServer()
        defer { server.stop() }
        let client = try makeClient(server, storage: .inMemory, credentials: .provider {
            throw AppSignedOut()
        })
        try await client.start()
        let failed = try await waitForStatus(client, "auth failed") { $0.state == .authFailed }
        guard case .Auth(_, let serverCode, let message)? = failed.lastError else {
            return XCTFail("expected .Auth, got \(String(describing: failed.lastError))")
        }
        XCTAssertEqual(serverCode, "credentials_unavailable")
        XCTAssertTrue(message.contains("AppSignedOut"), message)
        XCTAssertEqual(failed.lastError?.code(), "auth_failed")
        await client.shutdown()
    }

    /// Invalid configuration is a typed error thrown by the initializer, not a crash.
    func testInvalidConfigurationThrowsTypedError() throws {
        XCTAssertThrowsError(try KhalaSyncClient(config: KhalaSyncConfig(
            baseURL: "http://sync.example.com", topics: [topic], credentials: .bearer("x"),
            storage: .inMemory))) { error in
            guard let e = error as? KhalaSyncError, case .Config = e else {
                return XCTFail("expected .Config, got \(error)")
            }
            XCTAssertEqual(e.code(), "invalid_config")
        }
        XCTAssertThrowsError(try KhalaSyncClient(config: KhalaSyncConfig(
            baseURL: "http://127.0.0.1:1", topics: [], credentials: .bearer("x"),
            storage: .inMemory))) { error in
            XCTAssertEqual((error as? KhalaSyncError)?.code(), "invalid_config")
        }
        let client = try KhalaSyncClient(config: KhalaSyncConfig(
            baseURL: "http://127.0.0.1:1", topics: [topic], credentials: .bearer("x"),
            storage: .inMemory))
        XCTAssertThrowsError(try client.changes(topic: "")) { error in
            XCTAssertEqual((error as? KhalaSyncError)?.code(), "invalid_config")
        }
        XCTAssertEqual(client.status.state, .idle)
    }

    /// `pause()` stops network activity (a publish is not received while paused, local
    /// reads keep working); `resume()` reconnects and catches up.
    func testPauseAndResume() async throws {
        let server = try DevServer(seedDocs: 8)
        defer { server.stop() }
        let client = try makeClient(server, storage: .file(try temporaryDatabasePath()))
        let (changes, pump) = collect(try client.changes(topic: topic))
        defer { pump.cancel() }
        try await client.start()
        _ = try await waitForStatus(client, "live") { $0.isLive }
        let connects = client.metrics.connects

        await client.pause()
        _ = try await waitForStatus(client, "paused") { $0.state == .paused }
        try await eventually("the server sees the socket closed while paused") {
            (try? await server.metric("connections_current")) == 0
        }
        let key = "runtime/run_summary:while-paused"
        let mark = try await server.publish(topic: topic, key: key, payloadJSON: #"{"paused":true}"#)
        try await Task.sleep(nanoseconds: 1_000_000_000)
        XCTAssertEqual(client.status.state, .paused)
        let whilePaused = try await client.document(topic: topic, key: key)
        XCTAssertNil(whilePaused, "nothing is received while paused")
        let seenWhilePaused = upsertKeys(await changes.items)
        XCTAssertFalse(seenWhilePaused.contains(key))
        let localDocs = try await client.documents(topic: topic)
        XCTAssertFalse(localDocs.isEmpty, "local reads work while paused")

        await client.resume()
        _ = try await waitForStatus(client, "caught up after resume") {
            $0.isLive && ($0.topics.first?.watermark ?? 0) >= mark
        }
        try await eventually("the upsert after resume") { upsertKeys(await changes.items).contains(key) }
        let doc = try await client.document(topic: topic, key: key)
        XCTAssertEqual(doc?.watermark, mark)
        XCTAssertGreaterThan(client.metrics.connects, connects, "resume reconnected")
        let openSockets = try await server.metric("connections_current")
        XCTAssertEqual(openSockets, 1)
        XCTAssertEqual(client.metrics.snapshots, 1, "resume continues from the watermark")
        await client.shutdown()
    }

    /// Cancelling the task of a `for await` loop releases the Rust listener (both the
    /// binding's subscription and the Rust client's change receiver).
    func testCancellingForAwaitReleasesTheListener() async throws {
        let server = try DevServer()
        defer { server.stop() }
        let client = try makeClient(server, storage: .inMemory)
        try await client.start()
        _ = try await waitForStatus(client, "live") { $0.isLive }
        XCTAssertEqual(client.activeListeners, 0)
        XCTAssertEqual(client.changeListenerCount, 0)

        let received = Collected<Change>()
        let loop = Task {
            for await change in try client.changes(topic: topic) {
                await received.append(change)
            }
        }
        try await eventually("listener registered") {
            client.activeListeners == 1 && client.changeListenerCount == 1
        }
        try await server.publish(topic: topic, key: "runtime/run_summary:c1", payloadJSON: "{}")
        try await eventually("the loop received a change") { await !received.items.isEmpty }

        loop.cancel()
        _ = await loop.result
        try await eventually("listener released after cancel") {
            client.activeListeners == 0 && client.changeListenerCount == 0
        }

        // Breaking out of the loop (no cancellation) releases it too, once the stream is gone.
        let broke = Task { () -> Bool in
            for await _ in try client.changes(topic: topic) { return true }
            return false
        }
        try await eventually("second listener registered") { client.changeListenerCount == 1 }
        try await server.publish(topic: topic, key: "runtime/run_summary:c2", payloadJSON: "{}")
        let gotOne = try await broke.value
        XCTAssertTrue(gotOne)
        try await eventually("listener released after break") {
            client.activeListeners == 0 && client.changeListenerCount == 0
        }

        // A stream that is never iterated releases its listener when dropped.
        do { _ = try client.changes(topic: topic) }
        try await eventually("an unused stream releases its listener") {
            client.activeListeners == 0 && client.changeListenerCount == 0
        }

        // Status listeners as well.
        let statusLoop = Task { for await _ in client.statusUpdates {} }
        try await eventually("status listener registered") { client.activeListeners == 1 }
        statusLoop.cancel()
        _ = await statusLoop.result
        try await eventually("status listener released") { client.activeListeners == 0 }
        await client.shutdown()
    }
}
