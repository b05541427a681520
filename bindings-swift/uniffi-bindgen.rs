//! `uniffi-bindgen`: generates the Swift bindings of this crate from the built library.
fn main() {
    uniffi::uniffi_bindgen_main()
}
