//! WSDL 1.1 documents read for `gantry import wsdl`: each service's SOAP ports, with their
//! SOAP version (from the binding), address, and operations (the `soapAction`, the element
//! a request carries in its Body, and the order of that element's children in the schema).
//!
//! Read with uppsala's namespace-aware DOM, DTDs refused: WSDL names things by qualified
//! names (`element="tns:Add"`), which only resolve against the namespaces declared around
//! them.

use uppsala::{Document, NodeId, Parser};

use super::{ElementForm, SoapVersion};

const WSDL: &str = "http://schemas.xmlsoap.org/wsdl/";
const WSDL_SOAP11: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
const WSDL_SOAP12: &str = "http://schemas.xmlsoap.org/wsdl/soap12/";
const XSD: &str = "http://www.w3.org/2001/XMLSchema";

/// What `gantry import wsdl` needs of a WSDL document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wsdl {
    /// `definitions/@name`, if given.
    pub name: Option<String>,
    /// `definitions/@targetNamespace`.
    pub target_namespace: String,
    /// The services, in document order.
    pub services: Vec<Service>,
}

/// A `wsdl:service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Its ports bound to SOAP 1.1 or 1.2, in document order; other ports are left out.
    pub ports: Vec<Port>,
}

/// A `wsdl:port` with a SOAP binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Its name.
    pub name: String,
    /// The SOAP version of its binding.
    pub version: SoapVersion,
    /// `soap:address/@location`.
    pub address: Option<String>,
    /// The binding's operations, in document order.
    pub operations: Vec<Operation>,
}

/// One operation of a SOAP binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The operation's name.
    pub name: String,
    /// `soap:operation/@soapAction`, when not empty.
    pub action: Option<String>,
    /// The local name of the element inside a request's Body: the input part's element
    /// (document style) or the operation's name (rpc style).
    pub element: String,
    /// That element's namespace.
    pub namespace: String,
    /// Whether its children are qualified.
    pub element_form: ElementForm,
    /// The names of its children in the order the schema (or rpc message) gives them.
    pub field_order: Vec<String>,
}

impl Wsdl {
    /// Reads a WSDL 1.1 document.
    pub fn parse(text: &str) -> Result<Self, String> {
        let document =
            Parser::new().with_forbid_dtd(true).parse(text).map_err(|err| format!("not well-formed XML: {err}"))?;
        let root = document.document_element().ok_or("the document has no element")?;
        if !document.element(root).is_some_and(|element| element.matches_name_ns(WSDL, "definitions")) {
            return Err("the root element is not a WSDL 1.1 `definitions`".into());
        }
        let reader = Reader { document: &document, root };
        let target_namespace = reader.attribute(root, "targetNamespace").unwrap_or_default().to_owned();
        let mut services = Vec::new();
        for service in document.child_elements_by_name_ns(root, WSDL, "service") {
            let mut ports = Vec::new();
            for port in document.child_elements_by_name_ns(service, WSDL, "port") {
                if let Some(port) = reader.port(port, &target_namespace)? {
                    ports.push(port);
                }
            }
            let name = reader.attribute(service, "name").unwrap_or("service").to_owned();
            services.push(Service { name, ports });
        }
        Ok(Self { name: reader.attribute(root, "name").map(str::to_owned), target_namespace, services })
    }
}

struct Reader<'d, 'a> {
    document: &'d Document<'a>,
    root: NodeId,
}

impl Reader<'_, '_> {
    fn attribute(&self, element: NodeId, name: &str) -> Option<&str> {
        self.document.element(element)?.attributes.iter().find_map(|attribute| {
            let unqualified = attribute.name.namespace_uri.as_deref().is_none_or(str::is_empty);
            (unqualified && attribute.name.local_name == name).then_some(&*attribute.value)
        })
    }

    /// The namespace URI and local name of the qualified name `value` written on `element`.
    fn resolve(&self, element: NodeId, value: &str) -> (String, String) {
        let (prefix, local) = value.split_once(':').unwrap_or(("", value));
        let mut current = Some(element);
        while let Some(id) = current {
            if let Some(found) = self.document.element(id).and_then(|element| {
                element.namespace_declarations.iter().find(|(declared, _)| declared == prefix).map(|(_, uri)| uri)
            }) {
                return (found.to_string(), local.to_owned());
            }
            current = self.document.parent(id);
        }
        (String::new(), local.to_owned())
    }

    /// The child of `root` of kind `kind` named `name`.
    fn definition(&self, kind: &str, name: &str) -> Option<NodeId> {
        self.document
            .child_elements_by_name_ns(self.root, WSDL, kind)
            .into_iter()
            .find(|id| self.attribute(*id, "name") == Some(name))
    }

    fn port(&self, port: NodeId, target_namespace: &str) -> Result<Option<Port>, String> {
        let port_name = self.attribute(port, "name").unwrap_or("port").to_owned();
        let binding_name =
            self.attribute(port, "binding").ok_or_else(|| format!("port `{port_name}` names no binding"))?;
        let (_, binding_name) = self.resolve(port, binding_name);
        let binding = self
            .definition("binding", &binding_name)
            .ok_or_else(|| format!("port `{port_name}`: no binding `{binding_name}` in the document"))?;
        let (version, soap_namespace) =
            if let Some(found) = self.document.first_child_element_by_name_ns(binding, WSDL_SOAP11, "binding") {
                (SoapVersion::V11, (found, WSDL_SOAP11))
            } else if let Some(found) = self.document.first_child_element_by_name_ns(binding, WSDL_SOAP12, "binding") {
                (SoapVersion::V12, (found, WSDL_SOAP12))
            } else {
                return Ok(None);
            };
        let (soap_binding, soap_namespace) = soap_namespace;
        let default_style = self.attribute(soap_binding, "style").unwrap_or("document");
        let address = self
            .document
            .first_child_element_by_name_ns(port, soap_namespace, "address")
            .and_then(|address| self.attribute(address, "location"))
            .map(str::to_owned);
        let port_type_name = self.attribute(binding, "type").map(|name| self.resolve(binding, name).1);
        let port_type = port_type_name.as_deref().and_then(|name| self.definition("portType", name));
        let mut operations = Vec::new();
        for operation in self.document.child_elements_by_name_ns(binding, WSDL, "operation") {
            let name = self.attribute(operation, "name").unwrap_or_default().to_owned();
            let soap_operation = self.document.first_child_element_by_name_ns(operation, soap_namespace, "operation");
            let action = soap_operation
                .and_then(|found| self.attribute(found, "soapAction"))
                .filter(|action| !action.is_empty())
                .map(str::to_owned);
            let style = soap_operation.and_then(|found| self.attribute(found, "style")).unwrap_or(default_style);
            let body_namespace = self
                .document
                .first_child_element_by_name_ns(operation, WSDL, "input")
                .and_then(|input| self.document.first_child_element_by_name_ns(input, soap_namespace, "body"))
                .and_then(|body| self.attribute(body, "namespace"))
                .map(str::to_owned);
            let input = port_type.and_then(|port_type| self.input_message(port_type, &name));
            let operation = if style == "rpc" {
                // rpc style: the Body holds an element named after the operation, its children
                // the message's parts, unqualified (WSDL 1.1 section 3.5).
                let field_order = input
                    .map(|message| {
                        self.document
                            .child_elements_by_name_ns(message, WSDL, "part")
                            .into_iter()
                            .filter_map(|part| self.attribute(part, "name").map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Operation {
                    element: name.clone(),
                    namespace: body_namespace.unwrap_or_else(|| target_namespace.to_owned()),
                    element_form: ElementForm::Unqualified,
                    field_order,
                    name,
                    action,
                }
            } else {
                let part = input.and_then(|message| {
                    self.document
                        .child_elements_by_name_ns(message, WSDL, "part")
                        .into_iter()
                        .find(|part| self.attribute(*part, "element").is_some())
                });
                let Some(part) = part else {
                    return Err(format!("operation `{name}`: its input message has no part with an `element`"));
                };
                let element_name = self.attribute(part, "element").unwrap_or_default();
                let (namespace, element) = self.resolve(part, element_name);
                let (element_form, field_order) = self.element_children(&namespace, &element);
                Operation { name, action, element, namespace, element_form, field_order }
            };
            operations.push(operation);
        }
        Ok(Some(Port { name: port_name, version, address, operations }))
    }

    /// The input message of `operation` of `port_type`.
    fn input_message(&self, port_type: NodeId, operation: &str) -> Option<NodeId> {
        let operation = self
            .document
            .child_elements_by_name_ns(port_type, WSDL, "operation")
            .into_iter()
            .find(|id| self.attribute(*id, "name") == Some(operation))?;
        let input = self.document.first_child_element_by_name_ns(operation, WSDL, "input")?;
        let message = self.attribute(input, "message")?;
        let (_, message) = self.resolve(input, message);
        self.definition("message", &message)
    }

    /// The schema's `elementFormDefault` for `namespace` and the names of the children of its
    /// element `name`, in sequence order (the element's own complex type, or its named type).
    fn element_children(&self, namespace: &str, name: &str) -> (ElementForm, Vec<String>) {
        let Some(types) = self.document.first_child_element_by_name_ns(self.root, WSDL, "types") else {
            return (ElementForm::Qualified, Vec::new());
        };
        let schemas = self.document.child_elements_by_name_ns(types, XSD, "schema");
        let Some(schema) = schemas
            .into_iter()
            .find(|schema| self.attribute(*schema, "targetNamespace").unwrap_or_default() == namespace)
        else {
            return (ElementForm::Qualified, Vec::new());
        };
        let form = match self.attribute(schema, "elementFormDefault") {
            Some("qualified") => ElementForm::Qualified,
            // XML Schema's default.
            _ => ElementForm::Unqualified,
        };
        let named = |kind: &str, wanted: &str| {
            self.document
                .child_elements_by_name_ns(schema, XSD, kind)
                .into_iter()
                .find(|id| self.attribute(*id, "name") == Some(wanted))
        };
        let Some(element) = named("element", name) else { return (form, Vec::new()) };
        let complex_type = self.document.first_child_element_by_name_ns(element, XSD, "complexType").or_else(|| {
            let type_name = self.attribute(element, "type")?;
            named("complexType", &self.resolve(element, type_name).1)
        });
        let Some(sequence) =
            complex_type.and_then(|found| self.document.first_child_element_by_name_ns(found, XSD, "sequence"))
        else {
            return (form, Vec::new());
        };
        let order = self
            .document
            .child_elements_by_name_ns(sequence, XSD, "element")
            .into_iter()
            .filter_map(|child| {
                self.attribute(child, "name")
                    .map(str::to_owned)
                    .or_else(|| self.attribute(child, "ref").map(|reference| self.resolve(child, reference).1))
            })
            .collect();
        (form, order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spyne's WSDL of a small calculator (as `tests/e2e` serves it), shortened.
    const SPYNE: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<wsdl:definitions xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:wsdlsoap11="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/" xmlns:tns="urn:gantry:calculator" targetNamespace="urn:gantry:calculator" name="Calculator"><wsdl:types><xs:schema targetNamespace="urn:gantry:calculator" elementFormDefault="qualified"><xs:complexType name="Add"><xs:sequence><xs:element name="b" type="xs:integer"/><xs:element name="a" type="xs:integer"/></xs:sequence></xs:complexType><xs:element name="Add" type="tns:Add"/></xs:schema></wsdl:types><wsdl:message name="Add"><wsdl:part name="Add" element="tns:Add"/></wsdl:message><wsdl:service name="CalculatorService"><wsdl:port name="Calculator" binding="tns:Calculator"><wsdlsoap11:address location="http://127.0.0.1:8000/soap11"/></wsdl:port></wsdl:service><wsdl:portType name="Calculator"><wsdl:operation name="Add"><wsdl:input name="Add" message="tns:Add"/></wsdl:operation></wsdl:portType><wsdl:binding name="Calculator" type="tns:Calculator"><wsdlsoap11:binding style="document" transport="http://schemas.xmlsoap.org/soap/http"/><wsdl:operation name="Add"><wsdlsoap11:operation soapAction="Add" style="document"/><wsdl:input name="Add"><wsdlsoap11:body use="literal"/></wsdl:input></wsdl:operation></wsdl:binding></wsdl:definitions>"#;

    #[test]
    fn reads_services_ports_actions_and_the_order_of_fields() {
        let wsdl = Wsdl::parse(SPYNE).expect("a WSDL");
        assert_eq!(wsdl.target_namespace, "urn:gantry:calculator");
        assert_eq!(wsdl.services.len(), 1);
        let port = &wsdl.services[0].ports[0];
        assert_eq!(port.version, SoapVersion::V11);
        assert_eq!(port.address.as_deref(), Some("http://127.0.0.1:8000/soap11"));
        assert_eq!(
            port.operations,
            vec![Operation {
                name: "Add".into(),
                action: Some("Add".into()),
                element: "Add".into(),
                namespace: "urn:gantry:calculator".into(),
                element_form: ElementForm::Qualified,
                field_order: vec!["b".into(), "a".into()],
            }]
        );
    }

    #[test]
    fn reads_soap12_rpc_bindings_with_their_parts_unqualified() {
        let wsdl = r#"<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:s12="http://schemas.xmlsoap.org/wsdl/soap12/" xmlns:t="urn:t" targetNamespace="urn:t">
  <message name="GetIn"><part name="id" type="xsd:int"/><part name="lang" type="xsd:string"/></message>
  <portType name="P"><operation name="Get"><input message="t:GetIn"/></operation></portType>
  <binding name="B" type="t:P"><s12:binding style="rpc"/>
    <operation name="Get"><s12:operation soapAction="urn:t#Get"/><input><s12:body use="literal" namespace="urn:t:rpc"/></input></operation>
  </binding>
  <service name="S"><port name="Http" binding="t:B"><s12:address location="https://api.example.com/s"/></port>
    <port name="Other" binding="t:Missing"/></service>
</definitions>"#;
        let error = Wsdl::parse(wsdl).expect_err("a port names a binding that is not there");
        assert!(error.contains("no binding `Missing`"), "{error}");
        let wsdl = Wsdl::parse(&wsdl.replace(r#"<port name="Other" binding="t:Missing"/>"#, "")).expect("a WSDL");
        let port = &wsdl.services[0].ports[0];
        assert_eq!(port.version, SoapVersion::V12);
        let operation = &port.operations[0];
        assert_eq!((operation.element.as_str(), operation.namespace.as_str()), ("Get", "urn:t:rpc"));
        assert_eq!(operation.element_form, ElementForm::Unqualified);
        assert_eq!(operation.field_order, ["id", "lang"]);
        assert_eq!(operation.action.as_deref(), Some("urn:t#Get"));
    }

    #[test]
    fn refuses_documents_that_are_not_wsdl_or_carry_a_dtd() {
        assert!(Wsdl::parse("<html/>").is_err());
        assert!(Wsdl::parse(
            "<!DOCTYPE d [<!ENTITY x \"y\">]><definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\"/>"
        )
        .is_err());
        assert!(Wsdl::parse("<definitions").is_err());
    }
}
