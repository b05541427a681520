//! Reference Khala dev server.
