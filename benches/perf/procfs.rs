//! What the bench reads about processes from /proc: a process's CPU time and resident memory,
//! and the Postgres backends that serve its connections, so that a comparison can price each
//! side's calls in the database too (the vault's audit rows are written there, the floors'
//! SELECTs read there).
//!
//! A backend is found through its socket: the process's TCP connections to port 5432 (from its
//! file descriptors and /proc/net/tcp), then the postgres processes holding the other ends.
//! Everything runs on one machine, so both ends are in the same tables.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux's common
/// configurations).
const CLOCK_TICKS_PER_SECOND: u64 = 100;
/// The Postgres server's port, as the bench's database URLs name it.
const POSTGRES_PORT: u16 = 5432;

/// CPU time process `pid` has used, user and system, its ended threads' included, in clock
/// ticks (10 ms here), which is fine over the seconds a scenario runs. Zero once it is gone.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's name, which may hold spaces: state is the first field, utime and
    // stime the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / CLOCK_TICKS_PER_SECOND)
}

/// Process `pid`'s resident memory in bytes. Zero once it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The CPU time of each Postgres backend serving one of `pid`'s connections now.
pub fn postgres_backends_cpu(pid: u32) -> HashMap<u32, Duration> {
    postgres_backends(pid)
        .into_iter()
        .map(|backend| (backend, cpu_time(backend)))
        .collect()
}

/// CPU used since `before` by the backends serving `pid`'s connections now: a backend opened
/// since counts whole, one closed since is missed (pools keep theirs through a comparison).
pub fn postgres_backends_cpu_since(pid: u32, before: &HashMap<u32, Duration>) -> Duration {
    postgres_backends_cpu(pid)
        .into_iter()
        .map(|(backend, now)| now.saturating_sub(before.get(&backend).copied().unwrap_or_default()))
        .sum()
}

/// The pids of the postgres processes at the other end of `pid`'s connections to Postgres.
fn postgres_backends(pid: u32) -> Vec<u32> {
    let connections = tcp_connections();
    let own = socket_inodes(pid);
    let client_ports: HashSet<u16> = connections
        .iter()
        .filter(|c| own.contains(&c.inode) && c.remote_port == POSTGRES_PORT)
        .map(|c| c.local_port)
        .collect();
    let server_ends: HashSet<u64> = connections
        .iter()
        .filter(|c| c.local_port == POSTGRES_PORT && client_ports.contains(&c.remote_port))
        .map(|c| c.inode)
        .collect();
    if server_ends.is_empty() {
        return Vec::new();
    }
    processes_named("postgres")
        .into_iter()
        .filter(|&backend| !socket_inodes(backend).is_disjoint(&server_ends))
        .collect()
}

/// One line of /proc/net/tcp or tcp6: both ports and the socket's inode.
struct TcpConnection {
    local_port: u16,
    remote_port: u16,
    inode: u64,
}

fn tcp_connections() -> Vec<TcpConnection> {
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    Some(TcpConnection {
                        local_port: port(fields.get(1)?)?,
                        remote_port: port(fields.get(2)?)?,
                        inode: fields.get(9)?.parse().ok()?,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The inodes of the sockets process `pid` holds open (empty if it is gone or not readable).
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn processes_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == name))
        .collect()
}
