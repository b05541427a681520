//! khala-sync
