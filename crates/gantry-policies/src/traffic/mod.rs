//! Traffic-stage policies: how much a client may send.

pub mod request_size_limit;
