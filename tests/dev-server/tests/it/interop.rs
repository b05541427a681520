//! Interop with a Phoenix client that is not ours (Python `websockets`).

use crate::client::*;
use std::process::Command;

#[tokio::test]
async fn python_phoenix_client_replays_and_receives_live_push() {
    let has_websockets = Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_websockets {
        eprintln!("SKIPPED python_phoenix_client: `python3 -c 'import websockets'` failed (pip install websockets)");
        return;
    }
    let server = start(fast_config()).await;
    publish_n(&server, RUNS, 40);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/phoenix_client.py");
    let base = server.base_url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &base, RUNS, "12", "40"])
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "interop failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("OK 29 updates"), "{stdout}");
    assert_eq!(server.head(RUNS), 41);
}
