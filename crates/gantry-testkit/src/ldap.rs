//! A real OpenLDAP server (`slapd`) for tests of LDAP authentication.
//!
//! [`Slapd`] writes a cn=config directory and an mdb database for `dc=example,dc=org` into a
//! temporary directory, loads the given users with `slapadd` (offline, before start), runs
//! `slapd` in the foreground as a child process on free loopback ports, waits until it answers
//! an LDAP request (with a deadline), and kills it on drop. With [`Slapd::start_with_tls`] it
//! also serves `ldaps://` and StartTLS with a certificate from the test CA.
//!
//! The directory deliberately accepts *unauthenticated* binds (a DN with an empty password,
//! RFC 4513 §5.1.2, `olcAllows: bind_anon_dn`), as a lax directory might: tests then show that
//! the gateway refuses empty passwords itself instead of relying on the server's settings.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::CertFiles;

/// Base DN of the test directory.
pub const BASE_DN: &str = "dc=example,dc=org";
/// Where users live.
pub const PEOPLE_DN: &str = "ou=people,dc=example,dc=org";
/// A service account that may search (and read every attribute but passwords).
pub const READER_DN: &str = "cn=reader,dc=example,dc=org";
/// The service account's password.
pub const READER_PASSWORD: &str = "reader-secret-4711";

/// One user of the test directory: `uid=<uid>,ou=people,dc=example,dc=org`.
#[derive(Clone, Debug)]
pub struct LdapUser {
    /// The `uid`, also the login name.
    pub uid: String,
    /// The password (stored as given; slapd compares clear text for simple binds).
    pub password: String,
    /// Values of the multi-valued `employeeType` attribute, used as groups by tests.
    pub groups: Vec<String>,
    /// `mail`, for search filters that log in by e-mail.
    pub mail: Option<String>,
}

impl LdapUser {
    /// A user `uid` with `password`, in no group.
    pub fn new(uid: &str, password: &str) -> Self {
        Self { uid: uid.to_owned(), password: password.to_owned(), groups: Vec::new(), mail: None }
    }

    /// The same user with `employeeType` values `groups`.
    pub fn in_groups(mut self, groups: &[&str]) -> Self {
        self.groups = groups.iter().map(|group| (*group).to_owned()).collect();
        self
    }

    /// The same user with a `mail` address.
    pub fn with_mail(mut self, mail: &str) -> Self {
        self.mail = Some(mail.to_owned());
        self
    }

    /// The user's DN.
    pub fn dn(&self) -> String {
        format!("uid={},{PEOPLE_DN}", escape_rdn_value(&self.uid))
    }
}

/// A running `slapd`; killed on drop.
pub struct Slapd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ldap: SocketAddr,
    ldaps: Option<SocketAddr>,
}

impl Slapd {
    /// Starts a directory holding `users` on a free loopback port.
    pub fn start(users: &[LdapUser]) -> Self {
        Self::launch(users, None)
    }

    /// Like [`Self::start`], also serving `ldaps://` on a second port and StartTLS on the first,
    /// with the certificate `identity` (issued by a test CA for `127.0.0.1` or `localhost`).
    pub fn start_with_tls(users: &[LdapUser], identity: &CertFiles) -> Self {
        Self::launch(users, Some(identity))
    }

    fn launch(users: &[LdapUser], identity: Option<&CertFiles>) -> Self {
        let mut dir = tempfile::tempdir().expect("temp dir for slapd");
        let config_dir = dir.path().join("slapd.d");
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&config_dir).expect("create the cn=config directory");
        std::fs::create_dir(&data_dir).expect("create the database directory");
        let config = config_ldif(dir.path(), &data_dir, identity);
        let config_file = dir.path().join("config.ldif");
        std::fs::write(&config_file, config).expect("write config.ldif");
        let data_file = dir.path().join("data.ldif");
        std::fs::write(&data_file, data_ldif(users)).expect("write data.ldif");
        let slapadd = tool("slapadd");
        run_tool(Command::new(&slapadd).arg("-n0").arg("-F").arg(&config_dir).arg("-l").arg(&config_file));
        run_tool(Command::new(&slapadd).arg("-F").arg(&config_dir).arg("-b").arg(BASE_DN).arg("-l").arg(&data_file));

        // slapd binds the ports itself; a port found free just before can be taken meanwhile,
        // so a start that fails is retried on fresh ports until the deadline.
        let until = Instant::now() + crate::deadline();
        loop {
            let ldap = free_port();
            let ldaps = identity.map(|_| free_port());
            let mut urls = format!("ldap://{ldap}/");
            if let Some(ldaps) = ldaps {
                let _ = write!(urls, " ldaps://{ldaps}/");
            }
            let child = Command::new(tool("slapd"))
                .arg("-h")
                .arg(&urls)
                .arg("-F")
                .arg(&config_dir)
                // `-d` keeps slapd in the foreground, so the child is the server itself.
                .arg("-d")
                .arg("0")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start slapd");
            let mut server = Self { child: Some(child), dir, ldap, ldaps };
            match server.wait_until_ready(until) {
                Ok(()) => return server,
                Err(output) => {
                    assert!(Instant::now() < until, "slapd did not start: {output}");
                    dir = server.take_dir();
                }
            }
        }
    }

    /// Polls with `ldapsearch` until the root DSE answers; on an early exit gives slapd's output.
    fn wait_until_ready(&mut self, until: Instant) -> Result<(), String> {
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut output = String::new();
                    if let Some(mut stderr) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut stderr, &mut output);
                    }
                    return Err(format!("slapd exited with {status}: {output}"));
                }
            }
            let answered = Command::new(tool("ldapsearch"))
                .args(["-x", "-LLL", "-o", "nettimeout=2", "-s", "base", "-b", "", "-H"])
                .arg(self.url())
                .arg("objectClass=*")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if answered {
                return Ok(());
            }
            assert!(Instant::now() < until, "slapd did not answer on {} in time", self.ldap);
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn take_dir(mut self) -> tempfile::TempDir {
        self.stop();
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// `ldap://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ldap://{}", self.ldap)
    }

    /// `ldaps://<host>:<port>` for a server started with TLS; `host` is the name the
    /// certificate was issued for (`localhost` or `127.0.0.1`).
    pub fn ldaps_url(&self, host: &str) -> String {
        let ldaps = self.ldaps.expect("the server was started with TLS");
        format!("ldaps://{host}:{}", ldaps.port())
    }

    /// `ldap://<host>:<port>`, for StartTLS with the certificate's name.
    pub fn url_for(&self, host: &str) -> String {
        format!("ldap://{host}:{}", self.ldap.port())
    }

    /// The plain LDAP address.
    pub fn addr(&self) -> SocketAddr {
        self.ldap
    }

    /// The directory holding the server's configuration and database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server and waits for it to exit; its ports then refuse connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds `name` (`slapd`, `slapadd`, `ldapsearch`): in `$PATH`, then in `/usr/sbin`, where
/// Debian puts the server tools (and which a non-root `$PATH` often lacks).
fn tool(name: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).collect::<Vec<_>>())
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain([Path::new("/usr/sbin").join(name), Path::new("/usr/bin").join(name)])
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found: install the Debian packages slapd and ldap-utils (scripts/test.sh does)")
        })
}

fn run_tool(command: &mut Command) {
    let output = command.output().unwrap_or_else(|err| panic!("run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// Escapes an attribute value for an RDN as RFC 4514 §2.4 asks. Test fixtures only: the
/// gateway uses its LDAP library's escaping, which the tests then check against these DNs.
fn escape_rdn_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for (index, character) in value.chars().enumerate() {
        let leading = index == 0 && matches!(character, ' ' | '#');
        let trailing = index + 1 == value.chars().count() && character == ' ';
        if leading || trailing || matches!(character, '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

fn config_ldif(dir: &Path, data_dir: &Path, identity: Option<&CertFiles>) -> String {
    let mut global = format!(
        "dn: cn=config\nobjectClass: olcGlobal\ncn: config\nolcPidFile: {}\nolcAllows: bind_anon_dn\n",
        dir.join("slapd.pid").display()
    );
    if let Some(identity) = identity {
        let _ = write!(
            global,
            "olcTLSCertificateFile: {}\nolcTLSCertificateKeyFile: {}\n",
            identity.cert.display(),
            identity.key.display()
        );
    }
    format!(
        "{global}
dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE_DN}
olcDbDirectory: {data}
olcDbMaxSize: 16777216
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to * by * read
",
        data = data_dir.display()
    )
}

fn data_ldif(users: &[LdapUser]) -> String {
    let mut ldif = format!(
        "dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
         dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: reader\n\
         userPassword: {READER_PASSWORD}\n"
    );
    for user in users {
        let _ = write!(
            ldif,
            "\ndn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {password}\n",
            dn = user.dn(),
            uid = user.uid,
            password = user.password
        );
        for group in &user.groups {
            let _ = writeln!(ldif, "employeeType: {group}");
        }
        if let Some(mail) = &user.mail {
            let _ = writeln!(ldif, "mail: {mail}");
        }
    }
    ldif
}
