//! Identity-stage policies: who is calling. Each recognises a consumer from one kind of
//! credential and records it on the exchange; consumers carry their credentials under
//! `consumers[].credentials.<policy name>`.

pub mod any_auth;
pub mod basic_auth;
mod bearer;
pub mod hmac_auth;
pub mod jwks;
pub mod jwt;
pub mod key_auth;
pub mod ldap_auth;
pub mod mtls_auth;
pub mod oauth2_introspection;
pub mod oidc;
mod outbound;
pub(crate) mod request_credentials;
pub mod saml;
#[cfg(test)]
mod test_server;
pub mod verified_tokens;
