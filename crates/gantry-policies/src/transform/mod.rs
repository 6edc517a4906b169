//! Transform-stage policies: changing the request on its way upstream and the response on its
//! way back.

pub mod body_transform;
pub(crate) mod header_ops;
pub mod jolt;
mod json_body;
pub mod json_to_xml;
pub mod proxy_rewrite;
pub mod request_headers;
pub mod response_headers;
pub mod rest_to_soap;
pub mod script;
pub mod soap;
pub mod soap_to_rest;
mod xml_json;
pub mod xml_to_json;
pub mod xslt;

pub use header_ops::HeaderOpsConfig;
