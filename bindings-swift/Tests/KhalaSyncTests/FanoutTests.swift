// Dialect F (the Khala runtime fanout) from Swift: the same package, pointed at a server that
// only serves per-topic routes, syncs a run's event log.

import Foundation
import XCTest
import KhalaSync

final class FanoutTests: XCTestCase {

    /// `.auto` against a server without the Phoenix route switches to the fanout; every
    /// message of the run is stored once as the document `<sequence>`, over the WebSocket
    /// transport, then over the poll transport into a second database.
    func testAutoDialectSyncsARunEventLogOnAFanoutOnlyServer() async throws {
        let run = "run:r1:events"
        let server = try DevServer(extraArgs: ["--no-phoenix", "--seed-run", "r1:150"])
        defer { server.stop() }
        for transport in [SyncFanoutTransport.webSocket, .poll] {
            var options = SyncOptions()
            options.backoffBaseMs = 50
            options.backoffCapMs = 500
            options.dialect = .auto
            options.fanoutTransport = transport
            let client = try KhalaSyncClient(config: KhalaSyncConfig(
                baseURL: server.baseURL, topics: [run], credentials: .bearer(DevServer.appToken),
                storage: .file(try temporaryDatabasePath()), options: options
            ))
            try await client.start()
            let live = try await waitForStatus(client, "run \(transport) at head") {
                $0.isLive && $0.topics.first?.watermark == 150
            }
            XCTAssertEqual(live.transport, transport == .poll ? "poll" : "websocket")
            let docs = try await client.documents(topic: run)
            XCTAssertEqual(docs.map(\.docKey).sorted(), (1...150).map(String.init).sorted())
            XCTAssertTrue(docs.allSatisfy { $0.docVersion == UInt64($0.docKey) })
            await client.shutdown()
        }
    }
}
