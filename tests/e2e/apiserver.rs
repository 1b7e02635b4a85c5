//! Tests of the test API server itself (placeholder).
