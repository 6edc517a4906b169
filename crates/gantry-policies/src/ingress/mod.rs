//! Ingress-stage policies: decisions made right after the route is matched, before identity.

pub mod redirect;
