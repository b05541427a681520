//! Prepares `sync-sdk/src/store/conformance.rs` — the store conformance scenarios every
//! `Store` must pass — for `tests/browser.rs`, which runs them against the IndexedDB store in
//! headless Chromium. The scenarios are private `async fn(&dyn Store)` in a `cfg(test)` module
//! of khala-sync, so the test includes the file's text: this script drops its inner
//! attributes/doc comments (not allowed in `include!`), swaps `#[tokio::test]` for
//! `#[wasm_bindgen_test]`, and appends `for_idb_store!(<the same scenario list>)`.

use std::{env, fs, path::PathBuf};

fn main() {
    let src = PathBuf::from("../sync-sdk/src/store/conformance.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    let text = fs::read_to_string(&src).unwrap_or_default();
    let mut body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//!") && !l.trim_start().starts_with("#!["))
        .map(|l| l.replace("#[tokio::test]", "#[wasm_bindgen_test::wasm_bindgen_test]") + "\n")
        .collect();
    // The scenario list of `for_both_stores!( ... );`, reused for the IndexedDB store.
    let list = text
        .split("\nfor_both_stores!(")
        .nth(1)
        .and_then(|rest| rest.split(");").next())
        .unwrap_or("");
    body.push_str(&format!("\nfor_idb_store!({list});\n"));
    let _ = fs::write(out.join("conformance.rs"), body);
}
