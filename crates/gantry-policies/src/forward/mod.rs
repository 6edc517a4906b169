//! Forward-stage policies: answering instead of the upstream.

pub mod mock_response;
