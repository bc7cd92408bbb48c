//! Several real `token-vault` processes sharing one database, for tests of what only separate
//! processes can show: the exclusion across replicas, and a replica killed mid-refresh.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use token_vault::proto::{self, token_vault_client::TokenVaultClient};
use tonic::transport::Channel;

use crate::{
    helpers::{connect, settings_toml, token_from, token_request, TestDb, TestOptions},
    provider::{ClientAuth, ScriptedProvider},
};

pub struct VaultProcess {
    child: tokio::process::Child,
    pub addr: std::net::SocketAddr,
    pub client: TokenVaultClient<Channel>,
}

pub struct Cluster {
    pub provider: ScriptedProvider,
    pub processes: Vec<VaultProcess>,
    pub client_secret: String,
    pub dir: PathBuf,
    config: PathBuf,
    database_url: String,
    env: Vec<(String, String)>,
    _db: Option<TestDb>,
}

/// A port free at the moment of asking; the process binds it a moment later.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// `n` vault processes on a fresh database (or on `database_url` if given), with `env`
    /// overriding settings (`TOKEN_VAULT_REFRESH__LEASE_TTL`, …) in every process.
    pub async fn start(n: usize, opts: TestOptions, database_url: Option<String>, env: &[(&str, &str)]) -> Self {
        assert!(
            opts.extra_toml.is_empty(),
            "a cluster takes overrides as environment variables"
        );
        let (db, database_url) = match database_url {
            Some(url) => (None, url),
            None => {
                let db = TestDb::create("tv_test").await;
                let url = db.url.clone();
                (Some(db), url)
            }
        };
        let client_secret = format!("secret_{}", uuid::Uuid::new_v4().simple());
        let provider = ScriptedProvider::start("test-client", &client_secret, ClientAuth::Post).await;
        provider.set_access_ttl(opts.access_ttl);
        let dir = std::env::temp_dir().join(format!("token-vault-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            settings_toml(&provider.uri(), &database_url, &client_secret, &opts),
        )
        .unwrap();
        let mut cluster = Self {
            provider,
            processes: Vec::new(),
            client_secret,
            dir,
            config,
            database_url,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _db: db,
        };
        for _ in 0..n {
            cluster.spawn_process().await;
        }
        cluster
    }

    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Starts one more vault process and waits until it reports SERVING.
    pub async fn spawn_process(&mut self) -> usize {
        let index = self.processes.len();
        let port = free_port();
        let log = std::fs::File::create(self.dir.join(format!("vault-{index}.log"))).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_token-vault"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("TOKEN_VAULT_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("TOKEN_VAULT_LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the token-vault binary starts");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        loop {
            if token_vault::startup::probe_health(&format!("http://{addr}"))
                .await
                .unwrap_or(false)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "vault process {index} never became SERVING; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let client = connect(addr).await;
        self.processes.push(VaultProcess { child, addr, client });
        index
    }

    /// SIGTERM, as Kubernetes sends it before a pod goes away.
    pub fn terminate(&self, index: usize) {
        let pid = self.processes[index].child.id().expect("the process is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM was delivered");
    }

    /// Waits for process `index` to exit, at most `limit`.
    pub async fn wait_exit(&mut self, index: usize, limit: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(limit, self.processes[index].child.wait())
            .await
            .unwrap_or_else(|_| panic!("vault process {index} did not exit within {limit:?}"))
            .expect("waiting for the process")
    }

    /// Whether process `index` has exited (without waiting for it).
    pub fn has_exited(&mut self, index: usize) -> bool {
        self.processes[index]
            .child
            .try_wait()
            .expect("asking the process's status")
            .is_some()
    }

    /// SIGKILL: no shutdown, no lease release.
    pub async fn kill(&mut self, index: usize) {
        let p = &mut self.processes[index];
        p.child.start_kill().unwrap();
        p.child.wait().await.unwrap();
    }

    pub fn client(&self, index: usize) -> TokenVaultClient<Channel> {
        self.processes[index].client.clone()
    }

    pub async fn connect_tenant(&self, tenant: &str) {
        let mut client = self.client(0);
        let begun = client
            .begin_authorization(proto::BeginAuthorizationRequest {
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let code = self.provider.consent(&begun.authorization_url);
        client
            .complete_authorization(proto::CompleteAuthorizationRequest {
                state: begun.state,
                code,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// `per_process` concurrent GetAccessToken calls for `tenant` on every live process given.
    pub async fn stampede(
        &self,
        tenant: &str,
        processes: &[usize],
        per_process: usize,
    ) -> Vec<Result<String, tonic::Status>> {
        let calls = processes.iter().flat_map(|&i| {
            let client = self.client(i);
            (0..per_process).map(move |_| token_from(client.clone(), token_request(tenant)))
        });
        futures::future::join_all(calls).await
    }

    /// Every log line the processes wrote.
    pub fn logs(&self) -> String {
        (0..self.processes.len())
            .map(|i| std::fs::read_to_string(self.dir.join(format!("vault-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.child.start_kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
