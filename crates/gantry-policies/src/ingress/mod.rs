//! Ingress-stage policies: decisions made right after the route is matched, before identity.

pub mod cors;
pub mod ip_restriction;
pub mod redirect;
pub mod user_agent;
