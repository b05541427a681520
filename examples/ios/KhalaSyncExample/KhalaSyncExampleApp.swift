// A small SwiftUI app: a live list of run summaries and a status banner, using only the
// KhalaSync package's public API. Build it in Xcode (see ../README.md); it is not compiled on
// Linux (no SwiftUI there).

import SwiftUI
import KhalaSync

@main
struct KhalaSyncExampleApp: App {
    @StateObject private var model = RunSummariesModel()
    @Environment(\.scenePhase) private var scenePhase

    var body: some Scene {
        WindowGroup {
            ContentView(model: model)
                .task { await model.run() }
        }
        // Lifecycle contract: background → pause (socket closed, local reads keep working),
        // active → resume (reconnects, continues from the watermark); .inactive is ignored.
        .onChange(of: scenePhase) { phase in
            Task { await model.scenePhaseChanged(phase) }
        }
    }
}

/// Owns the client; publishes the rows and the banner to SwiftUI.
@MainActor
final class RunSummariesModel: ObservableObject {
    static let topic = "runtime.run_summaries"

    @Published private(set) var list = RunSummaryList()
    @Published private(set) var banner = "Not started"
    @Published private(set) var errorText: String?

    private var client: KhalaSyncClient?
    /// NWPathMonitor → `client.networkPathChanged(_:)`: a usable network path makes a client
    /// that is waiting in backoff reconnect at once.
    private var reachability: KhalaReachability?

    /// Starts syncing and follows status and changes until the view goes away.
    func run() async {
        do {
            let client = try KhalaSyncClient(config: KhalaSyncConfig(
                baseURL: AppConfig.syncBaseURL,
                topics: [Self.topic],
                credentials: .provider { try await AppSession.shared.authorizationHeaders() }
                // storage: defaults to Application Support/KhalaSync/khala-sync.sqlite
            ))
            self.client = client
            reachability = KhalaReachability(client: client)
            list.reload(try await client.documents(topic: Self.topic)) // offline-first: local copy
            let changes = try client.changes(topic: Self.topic)
            try await client.start()
            await withTaskGroup(of: Void.self) { group in
                group.addTask { @MainActor in
                    for await status in client.statusUpdates {
                        self.banner = bannerText(for: status)
                        self.errorText = status.lastError?.message()
                    }
                }
                group.addTask { @MainActor in
                    for await change in changes {
                        if self.list.apply(change) {
                            self.list.reload((try? await client.documents(topic: Self.topic)) ?? [])
                        }
                    }
                }
            }
        } catch let error as KhalaSyncError {
            errorText = "\(error.code()): \(error.message())"
        } catch {
            errorText = "\(error)"
        }
    }

    /// `.background` → `pause()`, `.active` → `resume()`, `.inactive` → nothing (see
    /// bindings-swift/README.md "Lifecycle"; `client.handleScenePhase(phase)` does the same in
    /// one call). The phase is mapped here, on the main actor, so only the `Sendable`
    /// `AppLifecycle` crosses into the client.
    func scenePhaseChanged(_ phase: ScenePhase) async {
        guard let client, let lifecycle = AppLifecycle(phase) else { return }
        await client.handleLifecycle(lifecycle)
    }
}

struct ContentView: View {
    @ObservedObject var model: RunSummariesModel

    var body: some View {
        NavigationView {
            VStack(spacing: 0) {
                Text(model.banner)
                    .font(.footnote.weight(.semibold))
                    .frame(maxWidth: .infinity)
                    .padding(6)
                    .background(model.banner == "Live" ? Color.green.opacity(0.25) : Color.orange.opacity(0.25))
                if let error = model.errorText {
                    Text(error).font(.caption).foregroundColor(.red).padding(4)
                }
                List(model.list.rows) { row in
                    HStack {
                        VStack(alignment: .leading) {
                            Text(row.title).font(.body)
                            Text(row.id).font(.caption).foregroundColor(.secondary)
                        }
                        Spacer()
                        Text(row.status).font(.caption.monospaced())
                    }
                }
            }
            .navigationTitle("Runs")
        }
    }
}

/// App configuration (replace with your server).
enum AppConfig {
    static let syncBaseURL = "https://sync.example.com"
}

/// Stand-in for the app's own session: returns the app's auth headers for the token call.
actor AppSession {
    static let shared = AppSession()
    private var token = "<app session token>"

    func authorizationHeaders() throws -> [String: String] {
        ["Authorization": "Bearer \(token)"]
    }
}
