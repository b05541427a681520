// The example's model: run summaries from the `runtime.run_summaries` topic, kept current by
// the KhalaSync package. Uses only the package's public API (KhalaSyncClient, Change, Doc,
// SyncStatus). Platform-neutral (no SwiftUI), so test-linux.sh type-checks it on Linux.

import Foundation
import KhalaSync

/// One row of the list: a run summary document.
public struct RunSummary: Identifiable, Equatable, Sendable {
    public var id: String
    public var title: String
    public var status: String
    public var watermark: UInt64

    /// Decodes a document's payload (`{"title": …, "status": …}`; unknown shapes still show).
    public init(key: String, payload: String, watermark: UInt64) {
        let object = (try? JSONSerialization.jsonObject(with: Data(payload.utf8))) as? [String: Any]
        id = key
        title = object?["title"] as? String ?? key
        status = object?["status"] as? String ?? "unknown"
        self.watermark = watermark
    }

    public init(doc: Doc) {
        self.init(key: doc.docKey, payload: doc.payload, watermark: doc.watermark)
    }
}

/// A one-line banner for the connection state.
public func bannerText(for status: SyncStatus) -> String {
    switch status.state {
    case .idle: return "Not started"
    case .authenticating: return "Signing in…"
    case .connecting: return "Connecting…"
    case .connected:
        if status.isLive { return "Live" }
        let progress = status.topics.compactMap(\.replayProgress).first.map { " \(Int($0 * 100))%" } ?? ""
        return "Catching up…\(progress)"
    case .backoff: return "Offline — retrying"
    case .paused: return "Paused"
    case .authFailed: return "Sign-in failed (\(status.lastError?.code() ?? "auth_failed"))"
    case .upgradeRequired: return "Please update the app"
    case .stopped: return "Stopped"
    }
}

/// The list state: rebuilt from the local store on bootstrap, patched by live changes.
public struct RunSummaryList: Sendable {
    public private(set) var rows: [RunSummary] = []

    public init() {}

    /// Replaces every row (after a bootstrap, or at launch from the local copy).
    public mutating func reload(_ docs: [Doc]) {
        rows = docs.map(RunSummary.init(doc:)).sorted { $0.watermark > $1.watermark }
    }

    /// Applies one committed change; returns true when the caller must `reload` (bootstrap).
    public mutating func apply(_ change: Change) -> Bool {
        switch change {
        case .upsert(_, let key, _, let payload, let watermark):
            rows.removeAll { $0.id == key }
            rows.insert(RunSummary(key: key, payload: payload, watermark: watermark), at: 0)
            return false
        case .delete(_, let key, _):
            rows.removeAll { $0.id == key }
            return false
        case .bootstrapped:
            return true
        case .truncated:
            // Dialect F event logs only; this list syncs a Phoenix document topic.
            return false
        }
    }
}
