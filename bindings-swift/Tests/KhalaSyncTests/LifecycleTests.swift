// The mobile lifecycle contract (issue 9 item 4) through the public hooks an app wires to
// SwiftUI's scenePhase and NWPathMonitor: `handleLifecycle(_:)` and `networkPathChanged(_:)`
// (the Apple adapters `handleScenePhase`/`KhalaReachability` only translate to these). Against
// real khala-dev-server processes over loopback sockets.

import Foundation
import XCTest
import KhalaSync

/// A monotonic clock in seconds.
func uptime() -> TimeInterval { ProcessInfo.processInfo.systemUptime }

/// A client whose backoff windows are long (`backoffBaseMs` 30 s, cap 60 s) with a fixed
/// jitter seed, so a scheduled retry is far away and an immediate reconnect stands out.
func makeSlowBackoffClient(_ server: DevServer, storage: KhalaStorage) throws -> KhalaSyncClient {
    var options = SyncOptions()
    options.backoffBaseMs = 30_000
    options.backoffCapMs = 60_000
    options.jitterSeed = 7
    return try KhalaSyncClient(config: KhalaSyncConfig(
        baseURL: server.baseURL, topics: [topic], credentials: .bearer(DevServer.appToken),
        storage: storage, options: options
    ))
}

/// Waits until `client` is in backoff with its next retry at least `minimum` seconds away and
/// returns that retry's engine time (`nextRetryAtMs`). The engine clock starts when the client
/// is built, so with `origin` taken just before building it, engine time ≤ uptime − origin and
/// the computed distance is a lower bound. A closer retry is let run (it fails again, the
/// next window is wider).
func waitForDistantRetry(
    _ client: KhalaSyncClient, origin: TimeInterval, minimum: Double, timeout: Double = 90
) async throws -> UInt64 {
    let deadline = uptime() + timeout
    while uptime() < deadline {
        let status = client.status
        if status.state == .backoff, let at = status.nextRetryAtMs,
           secondsUntil(at, origin: origin) >= minimum {
            return at
        }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
    throw TestFailure("no backoff with a retry ≥ \(minimum)s away within \(timeout)s (now: \(client.status.state))")
}

/// Lower bound of the seconds until engine time `at` (see `waitForDistantRetry`).
func secondsUntil(_ at: UInt64, origin: TimeInterval) -> Double {
    Double(at) / 1000 - (uptime() - origin)
}

final class LifecycleTests: XCTestCase {

    /// scenePhase background → pause: the server sees the socket close and nothing is applied
    /// while backgrounded; active → resume: one socket again, catches up from the watermark
    /// (no snapshot). Foreground on a running client does not touch the connection.
    func testBackgroundPausesAndForegroundCatchesUpWithoutSnapshot() async throws {
        let server = try DevServer(seedDocs: 8)
        defer { server.stop() }
        let client = try makeClient(server, storage: .file(try temporaryDatabasePath()))
        let (changes, pump) = collect(try client.changes(topic: topic))
        defer { pump.cancel() }
        try await client.start()
        _ = try await waitForStatus(client, "live") { $0.isLive }
        let bootstrapped = try await client.documents(topic: topic).count
        XCTAssertGreaterThan(bootstrapped, 0)

        // Activation of an app that is already syncing: no reconnect. (Metrics are published
        // right after the status; wait for the connect to be counted.)
        try await eventually("the connect counted") { client.metrics.connects >= 1 }
        let connects = client.metrics.connects
        let accepted = try await server.metric("connections_accepted_total")
        await client.handleLifecycle(.foreground)
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(client.status.state, .connected)
        XCTAssertEqual(client.metrics.connects, connects, "foreground while running keeps the socket")
        let acceptedAfterForeground = try await server.metric("connections_accepted_total")
        XCTAssertEqual(acceptedAfterForeground, accepted)

        await client.handleLifecycle(.background)
        _ = try await waitForStatus(client, "paused") { $0.state == .paused }
        try await eventually("the server sees the socket closed") {
            (try? await server.metric("connections_current")) == 0
        }
        let applied = client.metrics.updatesApplied
        let seenBefore = await changes.items.count
        let keys = (1...3).map { "runtime/run_summary:background-\($0)" }
        var marks: [UInt64] = []
        for key in keys {
            marks.append(try await server.publish(topic: topic, key: key, payloadJSON: #"{"bg":true}"#))
        }
        try await Task.sleep(nanoseconds: 500_000_000)
        XCTAssertEqual(client.status.state, .paused)
        XCTAssertEqual(client.metrics.updatesApplied, applied, "nothing applied in the background")
        let seenWhileBackground = await changes.items.count
        XCTAssertEqual(seenWhileBackground, seenBefore, "no change delivered in the background")
        for key in keys {
            let doc = try await client.document(topic: topic, key: key)
            XCTAssertNil(doc, "\(key) is not in the local copy while backgrounded")
        }
        let openWhileBackground = try await server.metric("connections_current")
        XCTAssertEqual(openWhileBackground, 0, "no socket while backgrounded")
        let local = try await client.documents(topic: topic)
        XCTAssertEqual(local.count, bootstrapped, "the local copy stays readable")
        let resumedBefore = try await server.metric("subscribes_with_resume")

        await client.handleLifecycle(.foreground)
        let last = marks[marks.count - 1]
        _ = try await waitForStatus(client, "caught up after foreground") {
            $0.isLive && ($0.topics.first?.watermark ?? 0) >= last
        }
        try await eventually("the three upserts after foreground") {
            Set(upsertKeys(await changes.items)).isSuperset(of: keys)
        }
        try await eventually("metrics count the three updates") {
            client.metrics.updatesApplied >= applied + 3
        }
        for (key, mark) in zip(keys, marks) {
            let doc = try await client.document(topic: topic, key: key)
            XCTAssertEqual(doc?.watermark, mark)
        }
        try await eventually("foreground reconnected (connects grew)") {
            client.metrics.connects > connects
        }
        XCTAssertEqual(client.metrics.snapshots, 1, "caught up from the watermark, no second snapshot")
        let snapshotsServed = try await server.metric("snapshots_started")
        XCTAssertEqual(snapshotsServed, 1)
        let resumedAfter = try await server.metric("subscribes_with_resume")
        XCTAssertGreaterThan(resumedAfter, resumedBefore, "resubscribed with resume_after")
        let open = try await server.metric("connections_current")
        XCTAssertEqual(open, 1)
        await client.shutdown()
    }

    /// The server goes away (process killed: reconnects are refused) and the client backs off
    /// with a retry ≥ 10 s away. The server comes back on the same port; an unusable path
    /// changes nothing; a usable path (NWPathMonitor `.satisfied`) makes the client reconnect
    /// at once, far before the scheduled retry.
    func testNetworkChangeDuringBackoffReconnectsImmediately() async throws {
        let first = try DevServer(seedDocs: 8)
        defer { first.stop() }
        let origin = uptime()
        let client = try makeSlowBackoffClient(first, storage: .file(try temporaryDatabasePath()))
        try await client.start()
        _ = try await waitForStatus(client, "live") { $0.isLive }
        let port = first.port
        try await eventually("the connect counted") { client.metrics.connects >= 1 }
        let connectsBefore = client.metrics.connects

        first.stop()
        let retryAt = try await waitForDistantRetry(client, origin: origin, minimum: 10)

        let second = try DevServer(seedDocs: 8, port: port)
        defer { second.stop() }
        client.networkPathChanged(.unsatisfied)
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(client.status.state, .backoff, "an unusable path triggers nothing")
        XCTAssertEqual(client.status.nextRetryAtMs, retryAt, "still waiting for the same retry")
        let acceptedBefore = try await second.metric("connections_accepted_total")
        XCTAssertEqual(acceptedBefore, 0, "no attempt reached the restarted server yet")

        let waitLeft = secondsUntil(retryAt, origin: origin)
        XCTAssertGreaterThanOrEqual(waitLeft, 8, "the scheduled retry is still far away")
        let changedAt = uptime()
        client.networkPathChanged(.satisfied)
        _ = try await waitForStatus(client, "connected after the network change", timeout: 5) {
            $0.state == .connected
        }
        let reconnectSeconds = uptime() - changedAt
        print("network change → connected in \(Int(reconnectSeconds * 1000)) ms; the scheduled retry was \(Int(waitLeft * 1000)) ms away")
        XCTAssertLessThan(reconnectSeconds, 2, "reconnected at once")
        XCTAssertLessThan(reconnectSeconds, waitLeft / 4, "far before the scheduled retry")
        try await eventually("the reconnect counted") { client.metrics.connects > connectsBefore }
        let accepted = try await second.metric("connections_accepted_total")
        XCTAssertGreaterThanOrEqual(accepted, 1)
        _ = try await waitForStatus(client, "live on the restarted server", timeout: 10) { $0.isLive }
        let open = try await second.metric("connections_current")
        XCTAssertEqual(open, 1)
        await client.shutdown()
    }

    /// At launch without a working token route (503 `sync_token_unavailable`, as with no
    /// network) the client backs off its token fetch; a usable path fetches the token at once.
    func testNetworkChangeDuringTokenBackoffFetchesTokenAtOnce() async throws {
        let server = try DevServer(seedDocs: 4)
        defer { server.stop() }
        try await server.faults(#"{"token_unavailable": true}"#)
        let origin = uptime()
        let client = try makeSlowBackoffClient(server, storage: .inMemory)
        try await client.start()
        let retryAt = try await waitForDistantRetry(client, origin: origin, minimum: 10)
        XCTAssertNotNil(client.status.lastError, "the refused token call is reported")
        let mintedBefore = try await server.metric("tokens_minted")
        XCTAssertEqual(mintedBefore, 0)
        XCTAssertEqual(client.metrics.connects, 0)

        try await server.faults(#"{"token_unavailable": false}"#)
        let waitLeft = secondsUntil(retryAt, origin: origin)
        XCTAssertEqual(client.status.nextRetryAtMs, retryAt, "still waiting for the same retry")
        let changedAt = uptime()
        client.networkPathChanged(.satisfied)
        _ = try await waitForStatus(client, "live after the network change", timeout: 5) { $0.isLive }
        let liveSeconds = uptime() - changedAt
        print("network change → live in \(Int(liveSeconds * 1000)) ms; the scheduled token retry was \(Int(waitLeft * 1000)) ms away")
        XCTAssertLessThan(liveSeconds, 2, "token fetched and connected at once")
        XCTAssertLessThan(liveSeconds, waitLeft / 4, "far before the scheduled retry")
        let minted = try await server.metric("tokens_minted")
        XCTAssertEqual(minted, 1)
        try await eventually("the connect counted") { client.metrics.connects >= 1 }
        XCTAssertEqual(client.metrics.connects, 1)
        await client.shutdown()
    }
}
