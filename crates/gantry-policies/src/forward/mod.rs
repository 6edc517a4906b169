//! Forward-stage policies: answering instead of the upstream, or choosing where to forward.

pub mod aggregate;
pub mod mock_response;
pub mod request_mirror;
pub mod response_cache;
pub mod traffic_split;
