//! Reloading the server certificate, the client CA and the caller policy without a restart:
//! the files are mounted the way the kubelet mounts a Secret (a `..data` symlink swapped
//! atomically), re-read every 200 ms while callers keep calling; a broken new file is refused,
//! logged and counted, and the one in place kept.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use time::OffsetDateTime;
use token_vault::{auth::hash_token, auth::Reloaded, proto};
use tonic::{transport::ClientTlsConfig, Code, Status};

use crate::{
    callers::{connect_as, Bearer, BearerClient, Leaf, Pki},
    helpers::{assert_reason, connect_tls, spawn_app_with, TestApp, TestOptions},
    secrets_in_logs::Captured,
};

/// A directory published like a Kubernetes Secret volume: each file is a symlink through
/// `..data`, which points at a directory of the current contents and is replaced in one
/// rename, so the vault sees the old set of files or the new one, never a mixture.
struct Mount {
    dir: PathBuf,
    files: BTreeMap<String, String>,
    version: u32,
}

impl Mount {
    fn new(files: &[(&str, String)]) -> Self {
        let dir = std::env::temp_dir().join(format!("tv-reload-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut mount = Self {
            dir,
            files: BTreeMap::new(),
            version: 0,
        };
        mount.set(files);
        for name in mount.files.keys() {
            std::os::unix::fs::symlink(format!("..data/{name}"), mount.dir.join(name)).unwrap();
        }
        mount
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Publishes the files with `changes` applied, atomically.
    fn set(&mut self, changes: &[(&str, String)]) {
        for (name, content) in changes {
            self.files.insert((*name).to_owned(), content.clone());
        }
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, content) in &self.files {
            std::fs::write(self.dir.join(&version).join(name), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const APP_TOKEN: &str = "token-app-5c1e";
const NEWCOMER_TOKEN: &str = "token-newcomer-93ab";
const SERVICE_SPIFFE: &str = "spiffe://cluster.test/ns/svc/sa/svc";

fn hex(token: &str) -> String {
    hash_token(token).iter().map(|b| format!("{b:02x}")).collect()
}

/// A policy file entry allowed everything but imports.
fn caller(name: &str, identity: &str) -> String {
    format!("[[callers]]\nname = \"{name}\"\n{identity}\nrpcs = [\"*\"]\nproviders = [\"*\"]\ntenants = [\"*\"]\n")
}

fn bearer_caller(name: &str, token: &str) -> String {
    caller(name, &format!("bearer_token_sha256 = [\"{}\"]", hex(token)))
}

/// The caller `app` by bearer token and `svc` by client certificate.
fn initial_policy() -> String {
    bearer_caller("app", APP_TOKEN) + &caller("svc", &format!("mtls_uris = [\"{SERVICE_SPIFFE}\"]"))
}

/// A vault serving TLS from `mount` (tls.crt, tls.key, ca.crt) with its callers from
/// policy.toml, re-reading them every 200 ms.
async fn spawn(mount: &Mount, pki: &Pki) -> TestApp {
    spawn_app_with(TestOptions {
        extra_toml: format!(
            "[keys]\nreload_interval = \"200ms\"\n\
             [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\nplaintext_health_listen = \"127.0.0.1:0\"\n\
             [auth]\nmode = \"enforce\"\npolicy_file = \"{}\"\n",
            mount.path("tls.crt"),
            mount.path("tls.key"),
            mount.path("ca.crt"),
            mount.path("policy.toml"),
        ),
        client_tls: Some(pki.client(None)),
        ..Default::default()
    })
    .await
}

fn server_files(leaf: &Leaf) -> [(&'static str, String); 2] {
    [("tls.crt", leaf.cert.clone()), ("tls.key", leaf.key.clone())]
}

fn mount_for(pki: &Pki, server: &Leaf) -> Mount {
    let [cert, key] = server_files(server);
    Mount::new(&[cert, key, ("ca.crt", pki.ca_pem()), ("policy.toml", initial_policy())])
}

/// A TLS client trusting `tls`'s CA on a new connection, presenting `token`.
async fn client(app: &TestApp, tls: ClientTlsConfig, token: &str) -> BearerClient {
    let channel = connect_tls(app.addr, tls).await;
    proto::token_vault_client::TokenVaultClient::with_interceptor(
        channel,
        Bearer(Some(format!("Bearer {token}").parse().unwrap())),
    )
}

/// The certificate the vault presents to a new connection (DER).
async fn served_certificate(app: &TestApp, pki: &Pki) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake succeeds");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

fn der(leaf: &Leaf) -> Vec<u8> {
    CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap().to_vec()
}

/// Waits (bounded generously) until `done` holds: reloads happen on the vault's schedule.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls GetAccessToken for `tenant` on `client`'s connection over and over until stopped;
/// returns how many calls succeeded and every failure.
struct Calling {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u64, Vec<Status>)>,
}

impl Calling {
    fn start(mut client: BearerClient, tenant: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tenant = tenant.to_owned();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client.get_access_token(token_request(&tenant)).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (ok, failed)
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> (u64, Vec<Status>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

fn token_request(tenant: &str) -> proto::GetAccessTokenRequest {
    proto::GetAccessTokenRequest {
        tenant_id: tenant.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_to_new_connections_and_no_call_fails() {
    let pki = Pki::new("reload");
    let (first, second) = (pki.leaf(&["localhost"], &[]), pki.leaf(&["localhost"], &[]));
    assert_ne!(der(&first), der(&second));
    let mut mount = mount_for(&pki, &first);
    let app = spawn(&mount, &pki).await;
    let mut established = client(&app, pki.client(None), APP_TOKEN).await;
    connect_as(&app, &mut established, "acme").await.unwrap();
    assert_eq!(served_certificate(&app, &pki).await, der(&first));

    let calling = Calling::start(established.clone(), "acme");
    tokio::time::sleep(Duration::from_millis(300)).await;
    mount.set(&server_files(&second));
    eventually("the new certificate is taken", || {
        app.reloads.reloaded(Reloaded::ServerCertificate) == 1
    })
    .await;
    assert_eq!(
        served_certificate(&app, &pki).await,
        der(&second),
        "a new connection gets the new certificate"
    );
    // A new caller connection works with it, and the established one goes on.
    let mut fresh = client(&app, pki.client(None), APP_TOKEN).await;
    fresh.get_access_token(token_request("acme")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = calling.finish().await;
    assert!(failed.is_empty(), "calls failed during the rotation: {failed:?}");
    assert!(ok > 0);
    established.get_access_token(token_request("acme")).await.unwrap();
    assert_eq!(app.reloads.refused(Reloaded::ServerCertificate), 0);
}

#[tokio::test]
async fn a_broken_expired_or_mismatched_certificate_is_refused_and_the_old_one_served() {
    let logs = Captured::install();
    let pki = Pki::new("reload");
    let served = pki.leaf(&["localhost"], &[]);
    let mut mount = mount_for(&pki, &served);
    let app = spawn(&mount, &pki).await;
    let mut caller = client(&app, pki.client(None), APP_TOKEN).await;
    connect_as(&app, &mut caller, "acme").await.unwrap();

    let other = pki.leaf(&["localhost"], &[]);
    let now = OffsetDateTime::now_utc();
    let expired = pki.leaf_valid(
        &["localhost"],
        &[],
        now - time::Duration::days(2),
        now - time::Duration::days(1),
    );
    let not_yet = pki.leaf_valid(
        &["localhost"],
        &[],
        now + time::Duration::days(1),
        now + time::Duration::days(2),
    );
    let broken: [(&str, [(&str, String); 2]); 4] = [
        (
            "garbage",
            [("tls.crt", "not a certificate".into()), ("tls.key", other.key.clone())],
        ),
        (
            "another certificate's key",
            [("tls.crt", other.cert.clone()), ("tls.key", served.key.clone())],
        ),
        ("expired", server_files(&expired)),
        ("not yet valid", server_files(&not_yet)),
    ];
    for (i, (what, files)) in broken.iter().enumerate() {
        mount.set(files);
        eventually(what, || {
            app.reloads.refused(Reloaded::ServerCertificate) == i as u64 + 1
        })
        .await;
        assert_eq!(served_certificate(&app, &pki).await, der(&served), "{what}");
        client(&app, pki.client(None), APP_TOKEN)
            .await
            .get_access_token(token_request("acme"))
            .await
            .unwrap();
    }
    assert_eq!(app.reloads.reloaded(Reloaded::ServerCertificate), 0);
    let text = logs.text();
    assert_eq!(text.matches("TLS RELOAD REFUSED").count(), 4, "{text}");
    assert!(text.contains("does not go with tls.cert_file"), "{text}");
    assert!(text.contains("not valid now"), "{text}");
    for leaf in [&served, &other, &expired, &not_yet] {
        assert!(!text.contains(leaf.key.trim()), "a private key reached the logs");
    }

    // Fixed: the next good certificate is taken.
    mount.set(&server_files(&other));
    eventually("the good certificate is taken", || {
        app.reloads.reloaded(Reloaded::ServerCertificate) == 1
    })
    .await;
    assert_eq!(served_certificate(&app, &pki).await, der(&other));
    caller.get_access_token(token_request("acme")).await.unwrap();
}

#[tokio::test]
async fn a_caller_added_to_the_policy_file_is_accepted_without_a_restart_and_a_broken_file_refused() {
    let logs = Captured::install();
    let pki = Pki::new("reload");
    let mut mount = mount_for(&pki, &pki.leaf(&["localhost"], &[]));
    let app = spawn(&mount, &pki).await;
    let mut app_caller = client(&app, pki.client(None), APP_TOKEN).await;
    connect_as(&app, &mut app_caller, "acme").await.unwrap();
    let mut newcomer = client(&app, pki.client(None), NEWCOMER_TOKEN).await;
    let err = newcomer.get_access_token(token_request("acme")).await.unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");

    let calling = Calling::start(app_caller.clone(), "acme");
    mount.set(&[(
        "policy.toml",
        initial_policy() + &bearer_caller("newcomer", NEWCOMER_TOKEN),
    )]);
    eventually("the new policy is taken", || {
        app.reloads.reloaded(Reloaded::Policy) == 1
    })
    .await;
    newcomer.get_access_token(token_request("acme")).await.unwrap();

    // Broken: not TOML, then an unknown RPC. Both refused; everyone keeps working.
    let broken = [
        "[[callers]\nname = ".to_owned(),
        initial_policy()
            + &format!(
                "[[callers]]\nname = \"nope\"\nbearer_token_sha256 = [\"{}\"]\nrpcs = [\"GetEverything\"]\nproviders = [\"*\"]\ntenants = [\"*\"]\n",
                hex("x")
            ),
    ];
    for (i, policy) in broken.iter().enumerate() {
        mount.set(&[("policy.toml", policy.clone())]);
        eventually("the broken policy is refused", || {
            app.reloads.refused(Reloaded::Policy) == i as u64 + 1
        })
        .await;
        newcomer.get_access_token(token_request("acme")).await.unwrap();
        app_caller.get_access_token(token_request("acme")).await.unwrap();
    }
    let (ok, failed) = calling.finish().await;
    assert!(failed.is_empty(), "calls failed during the reloads: {failed:?}");
    assert!(ok > 0);
    let text = logs.text();
    assert_eq!(text.matches("CALLER POLICY RELOAD REFUSED").count(), 2, "{text}");
    assert!(text.contains("GetEverything"), "the reason is logged: {text}");

    // A certificate caller on a connection opened before the next reloads: the vault reads
    // the certificate's names once per connection and looks them up in the policy of each call.
    let mut svc = mtls_client(&app, pki.client(Some(&pki.leaf(&[], &[SERVICE_SPIFFE])))).await;
    svc.get_access_token(token_request("acme")).await.unwrap();

    // A caller removed from the file is refused from the next call on, on its open connection.
    mount.set(&[("policy.toml", bearer_caller("newcomer", NEWCOMER_TOKEN))]);
    eventually("the shorter policy is taken", || {
        app.reloads.reloaded(Reloaded::Policy) == 2
    })
    .await;
    let err = app_caller.get_access_token(token_request("acme")).await.unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
    let err = svc.get_access_token(token_request("acme")).await.unwrap_err();
    assert_reason(&err, Code::Unauthenticated, "CALLER_UNKNOWN");
    newcomer.get_access_token(token_request("acme")).await.unwrap();

    // And a certificate caller added back, under another name, is known on the same connection.
    mount.set(&[(
        "policy.toml",
        bearer_caller("newcomer", NEWCOMER_TOKEN)
            + &caller("svc-again", &format!("mtls_uris = [\"{SERVICE_SPIFFE}\"]")),
    )]);
    eventually("the policy with the certificate caller is taken", || {
        app.reloads.reloaded(Reloaded::Policy) == 3
    })
    .await;
    svc.get_access_token(token_request("acme")).await.unwrap();
}

#[tokio::test]
async fn a_reloaded_client_ca_lets_certificates_of_the_new_ca_in_and_a_broken_one_is_refused() {
    let pki = Pki::new("reload");
    let next_ca = Pki::new("reload-next");
    let mut mount = mount_for(&pki, &pki.leaf(&["localhost"], &[]));
    let app = spawn(&mount, &pki).await;
    // The service's certificate from the next CA; the server's still from the first.
    let service = next_ca.leaf(&[], &[SERVICE_SPIFFE]);
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", app.addr.port()))
        .unwrap()
        .tls_config(pki.client(Some(&service)))
        .unwrap();
    // Refused in the handshake (with TLS 1.3 the client may learn it only at its first call).
    let reached = match endpoint.connect().await {
        Err(_) => None,
        Ok(channel) => proto::token_vault_client::TokenVaultClient::new(channel)
            .get_access_token(token_request("acme"))
            .await
            .err()
            .map(|e| e.code()),
    };
    assert!(
        !matches!(reached, Some(Code::NotFound)),
        "a certificate of an unknown CA does not get through: {reached:?}"
    );

    mount.set(&[("ca.crt", "garbage".to_owned())]);
    eventually("the broken CA bundle is refused", || {
        app.reloads.refused(Reloaded::ClientCa) == 1
    })
    .await;
    let mut svc_old = mtls_client(&app, pki.client(Some(&pki.leaf(&[], &[SERVICE_SPIFFE])))).await;
    let err = svc_old.get_access_token(token_request("acme")).await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");

    mount.set(&[("ca.crt", pki.ca_pem() + &next_ca.ca_pem())]);
    eventually("the new CA bundle is taken", || {
        app.reloads.reloaded(Reloaded::ClientCa) == 1
    })
    .await;
    let mut svc_new = mtls_client(&app, pki.client(Some(&service))).await;
    let err = svc_new.get_access_token(token_request("acme")).await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
    // The first CA's certificates still work: it is still in the bundle.
    let err = svc_old.get_access_token(token_request("acme")).await.unwrap_err();
    assert_reason(&err, Code::NotFound, "CONNECTION_NOT_FOUND");
}

async fn mtls_client(
    app: &TestApp,
    tls: ClientTlsConfig,
) -> proto::token_vault_client::TokenVaultClient<tonic::transport::Channel> {
    proto::token_vault_client::TokenVaultClient::new(connect_tls(app.addr, tls).await)
}
