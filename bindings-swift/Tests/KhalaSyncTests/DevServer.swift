// Test support: a real khala-dev-server process per test (fresh state), its /dev control
// routes over real HTTP, and timeouts.

import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import XCTest
import KhalaSync

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// One `khala-dev-server` process on an ephemeral loopback port. The binary comes from
/// `KHALA_DEV_SERVER` (test-linux.sh passes `target/debug/khala-dev-server`).
final class DevServer: @unchecked Sendable {
    static let appToken = "dev-app-token"

    let baseURL: String
    private let process: Process
    private let logURL: URL

    /// `port` 0 picks a free one; a fixed port restarts a server where a stopped one was.
    init(seedDocs: Int = 0, port: UInt16 = 0, extraArgs: [String] = []) throws {
        guard let binary = ProcessInfo.processInfo.environment["KHALA_DEV_SERVER"] else {
            throw TestFailure("KHALA_DEV_SERVER is not set (path of the khala-dev-server binary)")
        }
        logURL = FileManager.default.temporaryDirectory
            .appendingPathComponent("khala-dev-server-\(UUID().uuidString).log")
        guard FileManager.default.createFile(atPath: logURL.path, contents: nil) else {
            throw TestFailure("cannot create \(logURL.path)")
        }
        let log = try FileHandle(forWritingTo: logURL)
        process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--port", String(port), "--seed-docs", String(seedDocs)] + extraArgs
        var env = ProcessInfo.processInfo.environment
        env["RUST_LOG"] = "warn"
        process.environment = env
        process.standardOutput = log
        process.standardError = log
        try process.run()
        // The server prints `khala dev server: http://127.0.0.1:PORT` once it listens.
        let deadline = Date().addingTimeInterval(20)
        var found: String?
        while found == nil && Date() < deadline && process.isRunning {
            let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") where line.hasPrefix("khala dev server: ") {
                found = String(line.dropFirst("khala dev server: ".count))
            }
            if found == nil { Thread.sleep(forTimeInterval: 0.05) }
        }
        guard let url = found else {
            process.terminate()
            let text = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
            throw TestFailure("dev server did not start: \(text)")
        }
        baseURL = url
    }

    func stop() {
        if process.isRunning {
            // SIGKILL, not terminate()/interrupt(): the test runner spawns from a thread that
            // blocks SIGTERM/SIGINT and the child inherits that mask (seen: SigBlk in
            // /proc/PID/status), so those never arrive. The server keeps nothing on disk.
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: logURL)
    }

    deinit { stop() }

    /// `POST /dev/publish` one document; returns its watermark.
    @discardableResult
    func publish(topic: String, key: String, payloadJSON: String) async throws -> UInt64 {
        let body = "{\"topic\":\(jsonString(topic)),\"doc_key\":\(jsonString(key)),\"payload\":\(payloadJSON)}"
        let (status, data) = try await post(path: "/dev/publish", body: body)
        guard status == 200,
              let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let marks = obj["watermarks"] as? [NSNumber], let mark = marks.first
        else {
            throw TestFailure("publish failed: HTTP \(status) \(String(decoding: data, as: UTF8.self))")
        }
        return mark.uint64Value
    }

    /// The listening port (from `baseURL`).
    var port: UInt16 {
        UInt16(baseURL.split(separator: ":").last.map(String.init) ?? "") ?? 0
    }

    /// `POST /dev/faults` with a JSON object of switches (tests/dev-server/README.md).
    func faults(_ json: String) async throws {
        let (status, data) = try await post(path: "/dev/faults", body: json)
        guard status == 200 else {
            throw TestFailure("faults failed: HTTP \(status) \(String(decoding: data, as: UTF8.self))")
        }
    }

    /// `GET /dev/state/{topic}` head watermark.
    func head(topic: String) async throws -> UInt64 {
        let (status, data) = try await request(path: "/dev/state/\(topic)", method: "GET", body: nil)
        guard status == 200,
              let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let head = obj["head"] as? NSNumber
        else { throw TestFailure("state failed: HTTP \(status)") }
        return head.uint64Value
    }

    /// A global counter of `GET /internal/v1/khala/fanout/metrics` (e.g. `connections_current`).
    func metric(_ name: String) async throws -> UInt64 {
        let (status, data) = try await request(
            path: "/internal/v1/khala/fanout/metrics", method: "GET", body: nil)
        guard status == 200,
              let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any],
              let value = obj[name] as? NSNumber
        else { throw TestFailure("metrics failed: HTTP \(status), no \(name)") }
        return value.uint64Value
    }

    private func jsonString(_ s: String) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: [s])) ?? Data("[\"\"]".utf8)
        return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
    }

    private func post(path: String, body: String) async throws -> (Int, Data) {
        try await request(path: path, method: "POST", body: Data(body.utf8))
    }

    private func request(path: String, method: String, body: Data?) async throws -> (Int, Data) {
        guard let url = URL(string: baseURL + path) else { throw TestFailure("bad URL \(path)") }
        var req = URLRequest(url: url)
        req.httpMethod = method
        req.httpBody = body
        req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        let request = req
        return try await withCheckedThrowingContinuation { cont in
            URLSession.shared.dataTask(with: request) { data, response, error in
                if let error {
                    cont.resume(throwing: error)
                } else {
                    let status = (response as? HTTPURLResponse)?.statusCode ?? 0
                    cont.resume(returning: (status, data ?? Data()))
                }
            }.resume()
        }
    }
}

/// Runs `body`, failing with `what` if it takes longer than `seconds`.
func withTimeout<T: Sendable>(
    _ seconds: Double, _ what: String,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(nanoseconds: UInt64(seconds * 1_000_000_000))
            throw TestFailure("timed out after \(seconds)s waiting for \(what)")
        }
        guard let first = try await group.next() else { throw TestFailure("no result: \(what)") }
        group.cancelAll()
        return first
    }
}

/// The first status satisfying `predicate`, read from `client.statusUpdates`.
func waitForStatus(
    _ client: KhalaSyncClient, _ what: String, timeout: Double = 20,
    _ predicate: @escaping @Sendable (SyncStatus) -> Bool
) async throws -> SyncStatus {
    try await withTimeout(timeout, what) {
        for await status in client.statusUpdates where predicate(status) {
            return status
        }
        throw TestFailure("status stream ended before \(what)")
    }
}

/// Polls `condition` every 20 ms until true or `timeout`.
func eventually(
    _ what: String, timeout: Double = 5, _ condition: @escaping @Sendable () async -> Bool
) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if await condition() { return }
        try await Task.sleep(nanoseconds: 20_000_000)
    }
    throw TestFailure("timed out after \(timeout)s: \(what)")
}

/// A fresh temporary directory for a database file.
func temporaryDatabasePath() throws -> String {
    let dir = FileManager.default.temporaryDirectory
        .appendingPathComponent("khala-swift-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent("khala.sqlite").path
}
