//! A Postgres cluster of the test's own, on a free port, so that a test may restart it without
//! disturbing the shared server other tests use. Built with the machine's Postgres binaries,
//! run as the `postgres` user when the test runs as root.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn bin_dir() -> PathBuf {
    let root = PathBuf::from("/usr/lib/postgresql");
    let mut versions: Vec<_> = std::fs::read_dir(&root)
        .expect("the machine's Postgres binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions.pop().expect("a Postgres version").join("bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let pg = Self::empty();
        pg.run(&["initdb", "-D", &pg.data(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        pg.ctl("start");
        pg
    }

    /// A directory and a port, nothing running yet.
    fn empty() -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!("token-vault-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} to postgres failed", dir.display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self { port, dir, bin }
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether the machine has the server binaries these clusters need.
    pub fn available() -> bool {
        std::path::Path::new("/usr/lib/postgresql").is_dir()
            && std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|mut d| d.next().is_some())
    }

    /// A streaming standby of the primary reachable at `primary` (host 127.0.0.1), made with
    /// `pg_basebackup -R` and started on a port of its own.
    pub fn standby_of(primary: std::net::SocketAddr) -> Self {
        let pg = Self::empty();
        pg.run(&[
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port().to_string(),
            "-U",
            "postgres",
            "-D",
            &pg.data(),
            "-R",
            "-X",
            "stream",
            "--no-sync",
            // An immediate checkpoint on the primary: the default spreads it over minutes.
            "--checkpoint=fast",
        ]);
        pg.ctl("start");
        pg
    }

    /// Stops the server at once, as a crash would (no shutdown checkpoint).
    pub fn crash(&self) {
        self.run(&["pg_ctl", "-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// Promotes a standby to a primary on a new timeline, and waits for it.
    pub fn promote(&self) {
        self.run(&["pg_ctl", "-D", &self.data(), "-w", "promote"]);
    }

    /// Runs a Postgres binary as the `postgres` user (initdb and pg_ctl refuse root).
    fn run(&self, args: &[&str]) -> Output {
        let program = self.bin.join(args[0]);
        let output = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(&args[1..])
                .output()
        } else {
            Command::new(&program).args(&args[1..]).output()
        }
        .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        assert!(
            output.status.success(),
            "{} failed: {}{}",
            args[0],
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn ctl(&self, action: &str) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log").display().to_string();
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "-m",
            "fast",
            action,
        ]);
    }

    /// A restart with the server down for `gap`: every connection is cut (fast shutdown), and
    /// the server comes back on the same port.
    pub fn restart_with_gap(&self, gap: std::time::Duration) {
        self.ctl("stop");
        std::thread::sleep(gap);
        self.ctl("start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
