//! `gantry import wsdl FILE`: Gantry configuration from a WSDL 1.1 document.
//!
//! One upstream per service, where its SOAP port is served, and one route per operation of
//! that port: `POST <prefix>/<operation-in-kebab-case>` with `rest_to_soap` set up from the
//! binding (SOAP version, `soapAction`, the request element, its namespace and the order of its
//! fields in the schema). As `gantry import openapi`, the YAML is written by hand so it reads
//! like a configuration a person wrote.

use std::fmt::Write as _;
use std::process::ExitCode;

use gantry_policies::transform::soap::wsdl::{Port, Wsdl};
use gantry_policies::transform::soap::{ElementForm, SoapVersion};

use crate::cli::ImportWsdlArgs;
use crate::import::{parse_upstream_url, quote, slug};

/// `gantry import wsdl`.
pub fn import_wsdl(args: &ImportWsdlArgs) -> ExitCode {
    let written = render_import(args).and_then(|yaml| match &args.output {
        Some(output) => std::fs::write(output, yaml)
            .map(|()| eprintln!("wrote {}", output.display()))
            .map_err(|err| format!("cannot write `{}`: {err}", output.display())),
        None => {
            print!("{yaml}");
            Ok(())
        }
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn render_import(args: &ImportWsdlArgs) -> Result<String, String> {
    let text =
        std::fs::read_to_string(&args.file).map_err(|err| format!("cannot read `{}`: {err}", args.file.display()))?;
    let wsdl = Wsdl::parse(&text).map_err(|reason| format!("`{}`: {reason}", args.file.display()))?;
    let version = match args.soap_version.as_deref() {
        None => None,
        Some("1.1") => Some(SoapVersion::V11),
        Some("1.2") => Some(SoapVersion::V12),
        Some(other) => return Err(format!("--soap-version {other}: give 1.1 or 1.2")),
    };
    let chosen: Vec<(&str, &Port)> = wsdl
        .services
        .iter()
        .filter_map(|service| {
            let port = service.ports.iter().find(|port| version.is_none_or(|version| port.version == version))?;
            Some((service.name.as_str(), port))
        })
        .collect();
    if chosen.is_empty() {
        let bound = version.map(|version| format!(" with a SOAP {} binding", version.as_str())).unwrap_or_default();
        return Err(format!("`{}` has no service port{bound}", args.file.display()));
    }
    let base_id = match &args.upstream {
        Some(id) => {
            gantry_config::validate::check_id(id).map_err(|reason| format!("--upstream {id}: {reason}"))?;
            id.clone()
        }
        None => {
            let name = wsdl.name.as_deref().unwrap_or(chosen[0].0);
            slug(name, 40).unwrap_or_else(|| "soap".to_owned())
        }
    };
    let prefix = match &args.prefix {
        Some(prefix) if prefix.starts_with('/') => prefix.trim_end_matches('/').to_owned(),
        Some(prefix) => return Err(format!("--prefix {prefix}: must start with `/`")),
        None => format!("/{base_id}"),
    };

    let mut yaml = String::new();
    let _ = writeln!(yaml, "# Written by `gantry import wsdl` from {}.", args.file.display());
    let _ =
        writeln!(yaml, "# Each route takes a JSON object of the operation's fields; rest_to_soap makes the SOAP call.");
    let mut upstreams = String::new();
    let mut routes = String::new();
    let mut route_ids: Vec<String> = Vec::new();
    let several = chosen.len() > 1;
    for (service, port) in &chosen {
        let service_slug = slug(service, 20).unwrap_or_else(|| "service".to_owned());
        let id = if several { format!("{base_id}-{service_slug}") } else { base_id.clone() };
        let service_prefix = if several { format!("{prefix}/{service_slug}") } else { prefix.clone() };
        let address = args.address.as_deref().or(port.address.as_deref()).ok_or_else(|| {
            format!(
                "service `{service}` has no soap:address; give where it is served with --address http://host:port/path"
            )
        })?;
        let target = parse_upstream_url(address, true).map_err(|reason| format!("{reason} (service `{service}`)"))?;
        let endpoint_path = endpoint_path(address, args.address.as_deref(), port.address.as_deref());
        let _ = writeln!(upstreams, "  - id: {id}\n    endpoints: [{}]", quote(&target.endpoint));
        if target.is_https {
            let _ = writeln!(upstreams, "    scheme: https");
        }
        for operation in &port.operations {
            let route_id = unique_id(&format!("{id}-{}", kebab(&operation.name)), &route_ids);
            let _ = writeln!(routes, "  - id: {route_id}");
            let _ = writeln!(routes, "    paths: [{}]", quote(&format!("{service_prefix}/{}", kebab(&operation.name))));
            let _ = writeln!(routes, "    methods: [POST]");
            let _ = writeln!(routes, "    upstream: {id}");
            let _ = writeln!(routes, "    policies:\n      - rest_to_soap:");
            let _ = writeln!(routes, "          soap_version: {}", quote(port.version.as_str()));
            let _ = writeln!(routes, "          namespace: {}", quote(&operation.namespace));
            let _ = writeln!(routes, "          operation: {}", quote(&operation.element));
            if let Some(action) = &operation.action {
                let _ = writeln!(routes, "          action: {}", quote(action));
            }
            let _ = writeln!(routes, "          path: {}", quote(&endpoint_path));
            if operation.element_form == ElementForm::Unqualified {
                let _ = writeln!(routes, "          element_form: unqualified");
            }
            if !operation.field_order.is_empty() {
                let fields: Vec<String> = operation.field_order.iter().map(|name| quote(name)).collect();
                let _ = writeln!(routes, "          field_order: [{}]", fields.join(", "));
            }
            route_ids.push(route_id);
        }
    }
    if route_ids.is_empty() {
        return Err(format!("`{}` describes no operation", args.file.display()));
    }
    let _ = write!(yaml, "upstreams:\n{upstreams}routes:\n{routes}");
    Ok(yaml)
}

/// The path the SOAP endpoint is served at: `--address`'s when it has one, else the WSDL's.
fn endpoint_path(chosen: &str, given: Option<&str>, described: Option<&str>) -> String {
    let path_of = |url: &str| {
        url.parse::<http::Uri>().ok().and_then(|uri| uri.path_and_query().map(|path| path.as_str().to_owned()))
    };
    let given_path = given.and_then(path_of).filter(|path| path != "/");
    given_path.or_else(|| described.and_then(path_of)).or_else(|| path_of(chosen)).unwrap_or_else(|| "/".to_owned())
}

/// `stem`, or `stem-2`, `stem-3`... when taken, within the 64 characters of an id.
fn unique_id(stem: &str, taken: &[String]) -> String {
    let mut id: String = stem.chars().take(64).collect();
    let mut suffix = 2;
    while taken.contains(&id) {
        let tail = format!("-{suffix}");
        id = format!("{}{tail}", stem.chars().take(64 - tail.len()).collect::<String>());
        suffix += 1;
    }
    id
}

/// `GetUserByID` as `get-user-by-id`: a dash where a lower-case letter or digit meets an
/// upper-case one, or where an upper-case run ends before a lower-case letter.
fn kebab(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (index, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            continue;
        }
        if c.is_ascii_uppercase() && index > 0 && !out.ends_with('-') {
            let previous = chars[index - 1];
            let next_is_lower = chars.get(index + 1).is_some_and(char::is_ascii_lowercase);
            if previous.is_ascii_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_ascii_uppercase() && next_is_lower)
            {
                out.push('-');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "operation".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_operation_names_in_kebab_case() {
        assert_eq!(kebab("Add"), "add");
        assert_eq!(kebab("SayHello"), "say-hello");
        assert_eq!(kebab("getUserByID"), "get-user-by-id");
        assert_eq!(kebab("HTTPRequest2Go"), "http-request2-go");
        assert_eq!(kebab("list_items"), "list-items");
        assert_eq!(kebab("__"), "operation");
    }

    #[test]
    fn takes_the_endpoint_path_from_the_address_given_else_the_wsdl() {
        let described = Some("http://10.0.0.1:8000/soap11");
        assert_eq!(endpoint_path("http://h:1", Some("http://h:1"), described), "/soap11");
        assert_eq!(endpoint_path("http://h:1/other", Some("http://h:1/other"), described), "/other");
        assert_eq!(endpoint_path("http://10.0.0.1:8000/soap11", None, described), "/soap11");
    }

    /// One service with a SOAP 1.1 and a SOAP 1.2 port, as WCF describes its services.
    const TWO_BINDINGS: &str = r#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:s11="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:s12="http://schemas.xmlsoap.org/wsdl/soap12/" xmlns:t="urn:t" name="Billing Service" targetNamespace="urn:t">
  <message name="PayIn"><part name="amount" type="xsd:int"/></message>
  <portType name="P"><operation name="PayInvoice"><input message="t:PayIn"/></operation></portType>
  <binding name="B11" type="t:P"><s11:binding style="rpc"/><operation name="PayInvoice"><s11:operation soapAction="urn:t#pay"/></operation></binding>
  <binding name="B12" type="t:P"><s12:binding style="rpc"/><operation name="PayInvoice"><s12:operation soapAction="urn:t#pay"/></operation></binding>
  <service name="Billing">
    <port name="P11" binding="t:B11"><s11:address location="https://billing.example.com/soap"/></port>
    <port name="P12" binding="t:B12"><s12:address location="https://billing.example.com/soap12"/></port>
  </service>
</definitions>"#;

    fn import(arguments: &[&str]) -> Result<String, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("billing.wsdl");
        std::fs::write(&file, TWO_BINDINGS).expect("write the WSDL");
        let file = file.to_str().expect("UTF-8 path").to_owned();
        let args = [&["gantry", "import", "wsdl", file.as_str()], arguments].concat();
        let cli = <crate::cli::Cli as clap::Parser>::try_parse_from(args).expect("valid arguments");
        let Some(crate::cli::Command::Import(crate::cli::ImportSource::Wsdl(args))) = cli.command else {
            panic!("import wsdl")
        };
        render_import(&args)
    }

    #[test]
    fn writes_one_route_per_operation_of_the_chosen_binding() {
        let yaml = import(&[]).expect("imported");
        assert!(
            yaml.contains("  - id: billing-service\n    endpoints: [\"billing.example.com:443\"]\n    scheme: https"),
            "{yaml}"
        );
        assert!(
            yaml.contains("  - id: billing-service-pay-invoice\n    paths: [\"/billing-service/pay-invoice\"]"),
            "{yaml}"
        );
        assert!(yaml.contains("soap_version: \"1.1\""), "the first port: {yaml}");
        assert!(yaml.contains("element_form: unqualified\n          field_order: [\"amount\"]"), "{yaml}");

        let yaml = import(&[
            "--soap-version",
            "1.2",
            "--upstream",
            "pay",
            "--prefix",
            "/api/",
            "--address",
            "http://10.0.0.5:8080",
        ])
        .expect("imported");
        assert!(yaml.contains("  - id: pay\n    endpoints: [\"10.0.0.5:8080\"]\nroutes:"), "{yaml}");
        assert!(yaml.contains("  - id: pay-pay-invoice\n    paths: [\"/api/pay-invoice\"]"), "{yaml}");
        assert!(yaml.contains("soap_version: \"1.2\""), "{yaml}");
        assert!(yaml.contains("path: \"/soap12\""), "the WSDL's path when --address has none: {yaml}");

        assert!(import(&["--soap-version", "2"]).expect_err("no such version").contains("1.1 or 1.2"));
        assert!(import(&["--upstream", "a b"]).expect_err("not an id").contains("--upstream a b"));
        assert!(import(&["--prefix", "api"]).expect_err("not a path").contains("--prefix api"));
    }

    #[test]
    fn keeps_route_ids_unique_and_short() {
        let taken = vec!["a-add".to_owned()];
        assert_eq!(unique_id("a-add", &taken), "a-add-2");
        assert_eq!(unique_id(&"x".repeat(80), &[]).len(), 64);
    }
}
