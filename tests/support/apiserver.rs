//! The test API server (placeholder).
