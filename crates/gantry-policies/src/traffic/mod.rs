//! Traffic-stage policies: how much a client may send.

pub mod circuit_breaker;
pub mod concurrency_limit;
pub mod limit_headers;
pub mod limit_key;
pub mod limit_store;
pub mod quota;
pub mod rate_limit;
pub mod request_size_limit;
