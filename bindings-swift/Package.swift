// swift-tools-version:6.0
// KhalaSync: the Swift package of khala-sync (uniffi bindings over the Rust SDK).
//
// Targets:
//   khala_sync_ffiFFI  C header + module map of the Rust library. Release: the binary target
//                      `khala_sync_ffiFFI.xcframework` (scripts/build-xcframework.sh, macOS).
//                      Development/Linux: a system-library target over the generated header,
//                      linking lib/libkhala_sync_ffi.a (scripts/test-linux.sh).
//   KhalaSyncFFI       uniffi's generated Swift (never edited, not in git). Swift 5 language
//                      mode: Swift 6.0.3 crashes compiling an async foreign trait in Swift 6 mode.
//   KhalaSync          the idiomatic API (Swift 6 mode): KhalaSyncClient, AsyncStreams.
import Foundation
import PackageDescription

let root = Context.packageDirectory
let useXCFramework = FileManager.default.fileExists(atPath: "\(root)/khala_sync_ffiFFI.xcframework")

let ffiTarget: Target = useXCFramework
    ? .binaryTarget(name: "khala_sync_ffiFFI", path: "khala_sync_ffiFFI.xcframework")
    : .systemLibrary(name: "khala_sync_ffiFFI", path: "Sources/khala_sync_ffiFFI")

let ffiLinker: [LinkerSetting] = useXCFramework
    ? []
    : [.unsafeFlags(["-L\(root)/lib"]), .linkedLibrary("khala_sync_ffi")]

let package = Package(
    name: "KhalaSync",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "KhalaSync", targets: ["KhalaSync"]),
    ],
    targets: [
        ffiTarget,
        .target(
            name: "KhalaSyncFFI",
            dependencies: ["khala_sync_ffiFFI"],
            path: "Sources/KhalaSyncFFI",
            swiftSettings: [.swiftLanguageMode(.v5)],
            linkerSettings: ffiLinker
        ),
        .target(
            name: "KhalaSync",
            dependencies: ["KhalaSyncFFI"],
            path: "Sources/KhalaSync"
        ),
        .testTarget(
            name: "KhalaSyncTests",
            dependencies: ["KhalaSync"],
            path: "Tests/KhalaSyncTests"
        ),
    ]
)
