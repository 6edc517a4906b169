//! Access-stage policies: may this client make this request at all.

pub mod ip_restriction;
