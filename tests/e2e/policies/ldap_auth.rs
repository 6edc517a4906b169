//! `ldap_auth` through a running gateway against a real OpenLDAP `slapd`: direct bind and
//! search-then-bind, user names that need DN and filter escaping, the empty-password bypass
//! refused, directory groups for `acl`, cached logins surviving a directory outage while new
//! ones get 503, and `ldaps://` and StartTLS with the test CA.

use base64::Engine as _;
use gantry_testkit::certs::TestCa;
use gantry_testkit::client::{TestClient, TestResponse};
use gantry_testkit::ldap::{LdapUser, Slapd, BASE_DN, PEOPLE_DN, READER_DN, READER_PASSWORD};
use gantry_testkit::{EchoUpstream, GatewayProcess};
use http::{Method, StatusCode};

use crate::support::{gantry_binary, start_gateway};

fn users() -> Vec<LdapUser> {
    vec![
        LdapUser::new("alice", "alice-password-1").in_groups(&["staff", "admins"]),
        LdapUser::new("bob", "bob-password-2").in_groups(&["staff"]),
        LdapUser::new("smith, john", "smith-password-3"),
    ]
}

/// Consumer `billing-team` stands for directory user `alice` and has its own
/// `request_headers`; routes: `/direct/*` (direct bind), `/search/*` (search, then bind),
/// `/admins/*` (groups from `employeeType`, only `admins` allowed).
fn config(directory: &Slapd, upstream: &EchoUpstream) -> String {
    let url = directory.url();
    format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
  admin:
    address: 127.0.0.1:0
    api_key: e2e-admin-key-ldap-auth-77
consumers:
  - id: billing-team
    credentials:
      ldap_auth: {{username: alice}}
    policies:
      - request_headers: {{set: {{x-plan: gold}}}}
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: direct
    paths: [/direct/*]
    upstream: up
    policies:
      - ldap_auth: {{url: \"{url}\", base_dn: \"{PEOPLE_DN}\", realm: staff-area}}
      - request_headers: {{set: {{x-plan: free}}}}
  - id: search
    paths: [/search/*]
    upstream: up
    policies:
      - ldap_auth:
          url: \"{url}\"
          base_dn: \"{BASE_DN}\"
          bind_dn: \"{READER_DN}\"
          bind_password: \"{READER_PASSWORD}\"
          search_filter: \"(&(objectClass=inetOrgPerson)(uid={{username}}))\"
          cache_ttl: 0s
  - id: admins
    paths: [/admins/*]
    upstream: up
    policies:
      - ldap_auth: {{url: \"{url}\", base_dn: \"{PEOPLE_DN}\", groups_attribute: employeeType}}
      - acl: {{allow_groups: [admins]}}
",
        upstream = upstream.addr()
    )
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

async fn get_as(client: &TestClient, gateway: &GatewayProcess, path: &str, authorization: &str) -> TestResponse {
    client.request(Method::GET, &gateway.url(path), &[("authorization", authorization)], "").await
}

#[tokio::test]
async fn admits_directory_users_maps_a_named_one_to_its_consumer_and_hides_the_password() {
    let directory = Slapd::start(&users());
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&directory, &upstream));
    let client = TestClient::default();

    let alice = get_as(&client, &gateway, "/direct/invoices", &basic("alice", "alice-password-1")).await;
    assert_eq!(alice.status, StatusCode::OK, "{alice:?}");
    let seen = alice.json();
    assert!(seen["headers"]["authorization"].is_null(), "the password reached the upstream: {seen}");
    assert_eq!(seen["headers"]["x-plan"], "gold", "alice is billing-team, whose own request_headers apply");

    // Kong's `LDAP` scheme works too; bob is no configured consumer and gets the route's policies.
    let ldap_scheme = basic("bob", "bob-password-2").replacen("Basic", "LDAP", 1);
    let bob = get_as(&client, &gateway, "/direct/invoices", &ldap_scheme).await;
    assert_eq!(bob.status, StatusCode::OK, "{bob:?}");
    assert_eq!(bob.json()["headers"]["x-plan"], "free");

    let searched = get_as(&client, &gateway, "/search/invoices", &basic("bob", "bob-password-2")).await;
    assert_eq!(searched.status, StatusCode::OK, "{searched:?}");
    assert_eq!(upstream.requests(), 3);
}

#[tokio::test]
async fn refuses_wrong_passwords_unknown_users_and_the_empty_password_bypass_with_401() {
    let directory = Slapd::start(&users());
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&directory, &upstream));
    let client = TestClient::default();

    // The directory itself takes a DN with an empty password as an unauthenticated bind and
    // answers success (RFC 4513 §5.1.2), so only the gateway stands in the way.
    let alice_dn = LdapUser::new("alice", "").dn();
    let whoami = std::process::Command::new("ldapwhoami")
        .args(["-x", "-H", &directory.url(), "-D", &alice_dn, "-w", ""])
        .output()
        .expect("run ldapwhoami");
    assert!(whoami.status.success(), "the directory refused the empty password itself: {whoami:?}");

    for (path, user, password) in [
        ("/direct/x", "alice", "wrong-password"),
        ("/direct/x", "nobody", "any-password"),
        ("/direct/x", "alice", ""),
        ("/search/x", "alice", "wrong-password"),
        ("/search/x", "alice", ""),
    ] {
        let refused = get_as(&client, &gateway, path, &basic(user, password)).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path} {user}/{password:?}: {refused:?}");
        assert_eq!(refused.json()["type"], "https://gantry.dev/problems/invalid-credentials");
        if path.starts_with("/direct") {
            assert_eq!(refused.header("www-authenticate"), Some("Basic realm=\"staff-area\""));
        }
        assert!(!String::from_utf8_lossy(&refused.body).contains(password) || password.is_empty());
    }
    let missing = client.get(&gateway.url("/direct/x")).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.json()["type"], "https://gantry.dev/problems/missing-credentials");
    assert_eq!(upstream.requests(), 0, "a refused request reached the upstream");

    let metrics = client.get(&format!("http://{}/metrics", gateway.admin_addr())).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.lines().any(|line| line == "gantry_policy_answers_total{policy=\"ldap_auth\",status=\"401\"} 6"),
        "{text}"
    );
}

#[tokio::test]
async fn escapes_user_names_in_bind_dns_and_search_filters() {
    let directory = Slapd::start(&users());
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&directory, &upstream));
    let client = TestClient::default();

    // `uid=smith, john,ou=people,...` would be another DN; escaped it is this user's.
    for path in ["/direct/x", "/search/x"] {
        let smith = get_as(&client, &gateway, path, &basic("smith, john", "smith-password-3")).await;
        assert_eq!(smith.status, StatusCode::OK, "{path}: {smith:?}");
    }
    // Unescaped, `*` would match every user in the filter (and `alice)(uid=*` would add terms).
    for user in ["*", "alice)(uid=*", "a*"] {
        let injected = get_as(&client, &gateway, "/search/x", &basic(user, "alice-password-1")).await;
        assert_eq!(injected.status, StatusCode::UNAUTHORIZED, "{user}: {injected:?}");
    }
    // A comma in a direct-bind name cannot reach another part of the tree.
    let moved = get_as(&client, &gateway, "/direct/x", &basic("alice,ou=people", "alice-password-1")).await;
    assert_eq!(moved.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reads_groups_from_the_directory_for_acl() {
    let directory = Slapd::start(&users());
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&directory, &upstream));
    let client = TestClient::default();

    let alice = get_as(&client, &gateway, "/admins/panel", &basic("alice", "alice-password-1")).await;
    assert_eq!(alice.status, StatusCode::OK, "alice is in `admins`: {alice:?}");
    let bob = get_as(&client, &gateway, "/admins/panel", &basic("bob", "bob-password-2")).await;
    assert_eq!(bob.status, StatusCode::FORBIDDEN, "bob is only in `staff`: {bob:?}");
}

#[tokio::test]
async fn keeps_admitting_cached_logins_while_the_directory_is_down_and_answers_503_for_others() {
    let mut directory = Slapd::start(&users());
    let upstream = EchoUpstream::start("up").await;
    let gateway = start_gateway(&config(&directory, &upstream));
    let client = TestClient::default();

    let first = get_as(&client, &gateway, "/direct/x", &basic("alice", "alice-password-1")).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");

    directory.stop();
    let cached = get_as(&client, &gateway, "/direct/x", &basic("alice", "alice-password-1")).await;
    assert_eq!(cached.status, StatusCode::OK, "the cached login needs no directory: {cached:?}");

    for (path, user, password) in [
        ("/direct/x", "bob", "bob-password-2"),
        // Only successes are cached: a wrong password has to ask the directory.
        ("/direct/x", "alice", "wrong-password"),
        // `/search/*` caches nothing.
        ("/search/x", "alice", "alice-password-1"),
    ] {
        let down = get_as(&client, &gateway, path, &basic(user, password)).await;
        assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "{path} {user}: {down:?}");
        assert_eq!(down.json()["type"], "https://gantry.dev/problems/ldap-unavailable");
        assert!(down.header("www-authenticate").is_none());
    }
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn binds_over_ldaps_and_start_tls_trusting_the_configured_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("Gantry LDAP tests CA");
    let identity = ca.issue(dir.path(), "ldap", &["localhost"]);
    let ca_file = ca.write_ca(dir.path(), "ldap-ca.pem");
    let directory = Slapd::start_with_tls(&users(), &identity);
    let upstream = EchoUpstream::start("up").await;
    let other_ca = TestCa::new("Some other CA").write_ca(dir.path(), "other-ca.pem");
    let yaml = format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: ldaps
    paths: [/ldaps/*]
    upstream: up
    policies:
      - ldap_auth: {{url: \"{ldaps}\", base_dn: \"{PEOPLE_DN}\", ca_file: \"{ca}\"}}
  - id: starttls
    paths: [/starttls/*]
    upstream: up
    policies:
      - ldap_auth: {{url: \"{plain}\", start_tls: true, base_dn: \"{PEOPLE_DN}\", ca_file: \"{ca}\"}}
  - id: untrusted
    paths: [/untrusted/*]
    upstream: up
    policies:
      - ldap_auth: {{url: \"{ldaps}\", base_dn: \"{PEOPLE_DN}\", ca_file: \"{other}\"}}
",
        upstream = upstream.addr(),
        ldaps = directory.ldaps_url("localhost"),
        plain = directory.url_for("localhost"),
        ca = ca_file.display(),
        other = other_ca.display(),
    );
    let gateway = GatewayProcess::start_in(gantry_binary(), dir, "gantry.yaml", &yaml, &[]);
    let client = TestClient::default();

    for path in ["/ldaps/x", "/starttls/x"] {
        let alice = get_as(&client, &gateway, path, &basic("alice", "alice-password-1")).await;
        assert_eq!(alice.status, StatusCode::OK, "{path}: {alice:?}");
        let wrong = get_as(&client, &gateway, path, &basic("alice", "wrong-password")).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}: {wrong:?}");
    }
    // A directory whose certificate the configured CA did not issue is not trusted with passwords.
    let untrusted = get_as(&client, &gateway, "/untrusted/x", &basic("alice", "alice-password-1")).await;
    assert_eq!(untrusted.status, StatusCode::SERVICE_UNAVAILABLE, "{untrusted:?}");
}

/// A TCP relay in front of the directory: counts the connections the gateway opens and can
/// cut every open one, as a directory restart or an idle timeout would.
struct Relay {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut cuts = cuts.clone();
                // Only cuts after this connection was accepted end it.
                cuts.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self { addr, accepted, cut, task }
    }

    fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn cut_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn reuses_a_bounded_pool_of_directory_connections_and_replaces_broken_ones() {
    let directory = Slapd::start(&users());
    let relay = Relay::start(directory.addr()).await;
    let upstream = EchoUpstream::start("up").await;
    let yaml = format!(
        "node:
  listeners:
    - address: 127.0.0.1:0
upstreams:
  - id: up
    endpoints: [{upstream}]
routes:
  - id: pooled
    paths: [/pooled/*]
    upstream: up
    policies:
      - ldap_auth: {{url: \"ldap://{relay}\", base_dn: \"{PEOPLE_DN}\", pool_size: 2, cache_ttl: 0s}}
",
        upstream = upstream.addr(),
        relay = relay.addr,
    );
    let gateway = start_gateway(&yaml);
    let client = TestClient::default();

    // Twenty logins, eight at a time, with nothing cached: two connections serve them all.
    for _ in 0..5 {
        let credentials: Vec<String> =
            (0..4).flat_map(|_| [basic("alice", "alice-password-1"), basic("bob", "bob-password-2")]).collect();
        let logins = credentials.iter().map(|credential| get_as(&client, &gateway, "/pooled/x", credential));
        for response in futures_util::future::join_all(logins).await {
            assert_eq!(response.status, StatusCode::OK, "{response:?}");
        }
    }
    assert!(relay.connections() <= 2, "{} connections for a pool of 2", relay.connections());

    // Connections broken behind the pool's back are replaced, not reported as an outage.
    let before = relay.connections();
    relay.cut_all();
    let after_cut = get_as(&client, &gateway, "/pooled/x", &basic("alice", "alice-password-1")).await;
    assert_eq!(after_cut.status, StatusCode::OK, "{after_cut:?}");
    assert!(relay.connections() > before, "no new connection was opened");
    assert_eq!(upstream.requests(), 41);
}
