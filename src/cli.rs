//! Command line: clap derive, then one validated `Config`.
