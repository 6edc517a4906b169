//! Access-stage policies: may this client make this request at all.

pub mod acl;
pub mod allowed_hours;
pub mod scopes;
