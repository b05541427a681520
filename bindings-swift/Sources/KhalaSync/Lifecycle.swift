// App lifecycle and reachability hooks: the mobile half of the SDK's lifecycle contract
// (the web package has the same one for visibilitychange/online).
//
// Glue only. The platform-neutral core (`AppLifecycle`, `NetworkPathStatus`) maps an OS signal
// to one Rust call — `pause()`, `resume()` or `networkChanged()`; what those do (close the
// socket, keep the watermark, reset the backoff, reconnect) is decided in Rust. The Apple-only
// adapters (SwiftUI's `ScenePhase`, Network's `NWPathMonitor`) only translate to that core, so
// the Linux test suite drives exactly the code paths an iOS app uses.

import Foundation
#if canImport(SwiftUI)
import SwiftUI
#endif
#if canImport(Network)
import Network
#endif

/// The app lifecycle as the sync client cares about it.
public enum AppLifecycle: Sendable, Equatable {
    /// The app is visible and interactive (SwiftUI `.active`,
    /// `UIApplication.didBecomeActiveNotification`): sync.
    case foreground
    /// The app went to the background (SwiftUI `.background`,
    /// `UIApplication.didEnterBackgroundNotification`): stop using the network.
    case background
}

/// Reachability of the network path, as reported by the OS (`NWPath.status`).
public enum NetworkPathStatus: Sendable, Equatable {
    /// A usable path exists (`NWPath.Status.satisfied`).
    case satisfied
    /// No usable path (`.unsatisfied`, `.requiresConnection`).
    case unsatisfied
}

extension KhalaSyncClient {
    /// Forwards an app lifecycle change: `.background` → `pause()` (the socket is closed; the
    /// local copy stays readable), `.foreground` → `resume()` (reconnects at once, backoff
    /// reset, and continues from the stored watermark — no snapshot). Also retries after an
    /// auth failure, since the user may have signed in meanwhile. On a client that is running
    /// (or not started) `.foreground` changes nothing, so it is safe to send on every
    /// activation.
    public func handleLifecycle(_ lifecycle: AppLifecycle) async {
        switch lifecycle {
        case .background: await pause()
        case .foreground: await resume()
        }
    }

    /// Forwards a reachability update: when a usable path appears (or a different one, e.g.
    /// Wi-Fi → cellular), `networkChanged()` — a client waiting in backoff reconnects now,
    /// backoff reset. An unusable path is not forwarded: attempts would fail anyway and the
    /// client is already backing off.
    public func networkPathChanged(_ status: NetworkPathStatus) {
        if status == .satisfied {
            networkChanged()
        }
    }
}

#if canImport(SwiftUI)
extension AppLifecycle {
    /// `.active` → `.foreground`, `.background` → `.background`; `.inactive` (app switcher,
    /// Control Center, an alert over the app: transient) → `nil`, the connection is kept.
    public init?(_ phase: ScenePhase) {
        switch phase {
        case .active: self = .foreground
        case .background: self = .background
        default: return nil
        }
    }
}

extension KhalaSyncClient {
    /// Forwards SwiftUI's scene phase (see `AppLifecycle.init?(_:)` and `handleLifecycle`):
    ///
    /// ```swift
    /// .onChange(of: scenePhase) { phase in Task { await client.handleScenePhase(phase) } }
    /// ```
    public func handleScenePhase(_ phase: ScenePhase) async {
        if let lifecycle = AppLifecycle(phase) {
            await handleLifecycle(lifecycle)
        }
    }
}
#endif

#if canImport(Network)
/// Forwards `NWPathMonitor` updates to `KhalaSyncClient.networkPathChanged(_:)` while it is
/// alive: keep it as long as the client (e.g. next to it in the app's model).
///
/// ```swift
/// let reachability = KhalaReachability(client: client)  // starts monitoring
/// reachability.cancel()                                   // or let it deinit
/// ```
public final class KhalaReachability: @unchecked Sendable {
    // Immutable; NWPathMonitor may be cancelled from any thread (not every SDK marks it
    // Sendable, hence @unchecked).
    private let monitor: NWPathMonitor

    /// Starts an `NWPathMonitor` on `queue` that reports every path update to `client`
    /// (held weakly). The monitor's first update describes the current path; on a running,
    /// connected client it changes nothing.
    public init(
        client: KhalaSyncClient,
        queue: DispatchQueue = DispatchQueue(label: "KhalaSync.reachability")
    ) {
        monitor = NWPathMonitor()
        monitor.pathUpdateHandler = { [weak client] path in
            client?.networkPathChanged(path.status == .satisfied ? .satisfied : .unsatisfied)
        }
        monitor.start(queue: queue)
    }

    /// Stops monitoring.
    public func cancel() {
        monitor.cancel()
    }

    deinit {
        monitor.cancel()
    }
}
#endif
