use std::path::{Path, PathBuf};

use super::*;

const LIMITS: Limits = Limits { max_operations: 10_000_000, max_output_bytes: 1024 * 1024 };

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn compile(text: &str) -> Stylesheet {
    Stylesheet::compile(text.as_bytes(), None).expect("the stylesheet compiles")
}

/// Every case of tests/fixtures/cases.json gives, byte for byte, what lxml's libxslt gave
/// (regenerate.py wrote the `.expected` files).
#[test]
fn matches_the_reference_outputs() {
    let cases: Vec<serde_like::Case> = serde_like::parse(&String::from_utf8(read("cases.json")).expect("UTF-8"));
    assert!(cases.len() >= 8, "cases.json lists the cases");
    for case in cases {
        let stylesheet = Stylesheet::compile(&read(&case.stylesheet), Some(&fixtures().join(&case.stylesheet)))
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        let params: Vec<(&str, &str)> =
            case.params.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        let output = stylesheet
            .transform(&read(&case.input), &params, LIMITS)
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        let expected = read(&format!("{}.expected", case.name));
        assert_eq!(String::from_utf8_lossy(&output), String::from_utf8_lossy(&expected), "case {}", case.name);
    }
}

/// A tiny reader of cases.json, so the crate needs no JSON dependency for one test file.
mod serde_like {
    pub struct Case {
        pub name: String,
        pub stylesheet: String,
        pub input: String,
        pub params: Vec<(String, String)>,
    }

    fn strings(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '"' {
                let mut value = String::new();
                for c in chars.by_ref() {
                    if c == '"' {
                        break;
                    }
                    value.push(c);
                }
                found.push(value);
            }
        }
        found
    }

    pub fn parse(text: &str) -> Vec<Case> {
        text.split("{\"name\"")
            .skip(1)
            .map(|entry| {
                let (head, params) = entry.split_once("\"params\"").expect("a params field");
                let head = strings(&format!("\"name\"{head}"));
                let params = strings(params.split('}').next().unwrap_or_default());
                Case {
                    name: head[1].clone(),
                    stylesheet: head[3].clone(),
                    input: head[5].clone(),
                    params: params.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect(),
                }
            })
            .collect()
    }
}

#[test]
fn reads_the_output_method_and_media_type() {
    let text = compile(&String::from_utf8(read("csv.xsl")).expect("UTF-8"));
    assert_eq!(text.output().method.as_deref(), Some("text"));
    let none = compile(r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"/>"#);
    assert_eq!(none.output(), &Output::default());
    let typed = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:output method="xml" media-type="application/soap+xml"/></xsl:stylesheet>"#,
    );
    assert_eq!(typed.output().media_type.as_deref(), Some("application/soap+xml"));
}

#[test]
fn refuses_what_is_not_a_stylesheet_and_says_why() {
    let Err(Error::NotWellFormed(reason)) = Stylesheet::compile(b"<xsl:stylesheet", None) else {
        panic!("a truncated document is refused")
    };
    assert!(reason.contains("line 1"), "{reason}");
    let Err(Error::NotWellFormed(reason)) = Stylesheet::compile(
        br#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
              <xsl:template match="[broken"/></xsl:stylesheet>"#,
        None,
    ) else {
        panic!("a bad match pattern is refused")
    };
    assert!(reason.contains("[broken"), "{reason}");
    let Err(Error::NotWellFormed(reason)) = Stylesheet::compile(
        br#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
              <xsl:template match="/"><xsl:value-of select="///"/></xsl:template></xsl:stylesheet>"#,
        None,
    ) else {
        panic!("a bad XPath expression is refused")
    };
    assert!(reason.contains("could not compile select expression '///'"), "{reason}");
    // libxslt compiles some broken expressions lazily (as lxml shows too): they fail when run.
    let lazy = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:template match="/"><xsl:value-of select="concat("/></xsl:template></xsl:stylesheet>"#,
    );
    assert!(matches!(lazy.transform(b"<a/>", &[], LIMITS), Err(Error::Failed(_))));
}

#[test]
fn resolves_includes_against_the_stylesheet_file() {
    let dir = std::env::temp_dir().join(format!("gantry-xslt-include-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("lib")).expect("temp dir");
    std::fs::write(
        dir.join("lib/greet.xsl"),
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:template name="greet"><hello/></xsl:template></xsl:stylesheet>"#,
    )
    .expect("write");
    let main = br#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
        <xsl:include href="lib/greet.xsl"/>
        <xsl:template match="/"><xsl:call-template name="greet"/></xsl:template></xsl:stylesheet>"#;
    let stylesheet = Stylesheet::compile(main, Some(&dir.join("main.xsl"))).expect("the include is found");
    let output = stylesheet.transform(b"<a/>", &[], LIMITS).expect("transform");
    assert!(String::from_utf8_lossy(&output).contains("<hello/>"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn reports_input_that_is_not_well_formed() {
    let stylesheet = compile(&String::from_utf8(read("csv.xsl")).expect("UTF-8"));
    let Err(Error::NotWellFormed(reason)) = stylesheet.transform(b"<orders><item></orders>", &[], LIMITS) else {
        panic!("malformed input is refused")
    };
    assert!(reason.contains("line 1"), "{reason}");
    assert!(matches!(stylesheet.transform(b"", &[], LIMITS), Err(Error::NotWellFormed(_))));
}

#[test]
fn passes_parameters_as_strings_never_as_xpath() {
    let stylesheet = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:output method="text"/><xsl:param name="p" select="'default'"/>
             <xsl:template match="/"><xsl:value-of select="$p"/></xsl:template></xsl:stylesheet>"#,
    );
    let output = stylesheet.transform(b"<a/>", &[("p", "count(//*) + ' \"")], LIMITS).expect("transform");
    assert_eq!(output, b"count(//*) + ' \"");
    assert_eq!(stylesheet.transform(b"<a/>", &[], LIMITS).expect("transform"), b"default");
}

#[test]
fn stops_runaway_recursion_with_an_error() {
    let stylesheet = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:template match="/"><xsl:call-template name="r"/></xsl:template>
             <xsl:template name="r"><a><xsl:call-template name="r"/></a></xsl:template></xsl:stylesheet>"#,
    );
    let Err(Error::Failed(reason)) = stylesheet.transform(b"<a/>", &[], LIMITS) else {
        panic!("infinite recursion ends in an error")
    };
    assert!(reason.contains("recursion") || reason.contains("depth"), "{reason}");
}

#[test]
fn bounds_the_work_of_one_run() {
    // 2^20 calls, each evaluating XPath: far more operations than the limit allows.
    let stylesheet = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:template match="/"><xsl:call-template name="r"><xsl:with-param name="n" select="20"/></xsl:call-template></xsl:template>
             <xsl:template name="r"><xsl:param name="n"/>
               <xsl:if test="$n &gt; 0">
                 <xsl:call-template name="r"><xsl:with-param name="n" select="$n - 1"/></xsl:call-template>
                 <xsl:call-template name="r"><xsl:with-param name="n" select="$n - 1"/></xsl:call-template>
               </xsl:if></xsl:template></xsl:stylesheet>"#,
    );
    let limits = Limits { max_operations: 100_000, ..LIMITS };
    let started = std::time::Instant::now();
    assert!(matches!(stylesheet.transform(b"<a/>", &[], limits), Err(Error::Failed(_))));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn bounds_the_output() {
    let stylesheet = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:template match="/"><r><xsl:for-each select="//*"><xsl:copy-of select="/"/></xsl:for-each></r></xsl:template></xsl:stylesheet>"#,
    );
    let input = format!("<a>{}</a>", "<b>0123456789</b>".repeat(100));
    let limits = Limits { max_output_bytes: 10_000, ..LIMITS };
    assert_eq!(stylesheet.transform(input.as_bytes(), &[], limits), Err(Error::OutputTooLarge));
}

#[test]
fn reads_no_files_and_expands_no_entities() {
    let stylesheet = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:output method="text"/>
             <xsl:template match="/"><xsl:value-of select="document('/etc/hostname')"/>|<xsl:value-of select="."/></xsl:template></xsl:stylesheet>"#,
    );
    let result = stylesheet.transform(b"<a>x</a>", &[], LIMITS);
    assert!(matches!(result, Err(Error::Failed(_))), "document() must not read files: {result:?}");

    let echo = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:output method="text"/><xsl:template match="/"><xsl:value-of select="."/></xsl:template></xsl:stylesheet>"#,
    );
    let external = br#"<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>"#;
    let output = echo.transform(external, &[], LIMITS).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&output).contains("root:"), "an external entity was read");
}

#[test]
fn serves_many_threads_with_one_stylesheet() {
    let stylesheet = std::sync::Arc::new(compile(&String::from_utf8(read("summary.xsl")).expect("UTF-8")));
    let input = read("orders.xml");
    let expected = read("summary.expected");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let stylesheet = stylesheet.clone();
            let input = input.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let output = stylesheet.transform(&input, &[("channel", "mobile")], LIMITS).expect("transform");
                    assert_eq!(output, expected);
                    assert!(stylesheet.transform(b"<broken", &[], LIMITS).is_err());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no thread panicked");
    }
}

#[test]
fn refuses_documents_with_a_dtd() {
    let echo = compile(
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
             <xsl:output method="text"/><xsl:template match="/"><xsl:value-of select="."/></xsl:template></xsl:stylesheet>"#,
    );
    let mut laughs = String::from("<!DOCTYPE a [<!ENTITY l0 \"ha\">");
    for level in 1..=30 {
        let previous = format!("&l{};", level - 1);
        laughs.push_str(&format!("<!ENTITY l{level} \"{}\">", previous.repeat(10)));
    }
    laughs.push_str("]><a>&l30;</a>");
    let started = std::time::Instant::now();
    // libxml2 stops this one while parsing; the DTD check below refuses every other.
    assert!(matches!(echo.transform(laughs.as_bytes(), &[], LIMITS), Err(Error::NotWellFormed(_))));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let Err(Error::NotWellFormed(reason)) = echo.transform(br#"<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>"#, &[], LIMITS)
    else {
        panic!("a document with a DTD is refused")
    };
    assert!(reason.contains("DTD"), "{reason}");
    let Err(Error::NotWellFormed(_)) = echo.transform(b"<!DOCTYPE a SYSTEM \"a.dtd\"><a/>", &[], LIMITS) else {
        panic!("an external DTD is refused too")
    };
}
