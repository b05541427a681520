//! Cross-crate test suites: khala-sync against the real dev server over loopback.
//! The suites live in `tests/`; this crate has no code of its own.
