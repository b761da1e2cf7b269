//! `kvs dev-cluster`: a local cluster of real `kvs server` processes, for trying the store and
//! for tests.
//!
//! Node `i` (1-based) listens on `127.0.0.i:PORT` (the same port on distinct loopback
//! addresses, as nodes on separate hosts would; Linux routes all of 127.0.0.0/8 to `lo`), keeps
//! its data in `DIR/node-i` and its log in `DIR/node-i/server.log`, and lists every other node
//! as a seed. All nodes share the cluster name `dev` and a secret made at the first start and
//! kept in `DIR/cluster-secret`, so a restart of the dev cluster finds its data and its peers.
//!
//! The supervisor starts every node at once, waits (bounded) for each one's ready line, prints
//! a table and waits. Ctrl-C (SIGINT) or SIGTERM stops every node with SIGTERM, waits for each
//! (bounded by [`STOP_WAIT`]), kills the stragglers and exits 0 when every node stopped
//! cleanly, 1 otherwise. A node that exits on its own
//! is reported with its status and log path; the others keep running; when none is left the
//! supervisor exits 1. If the supervisor dies, the kernel sends every node SIGTERM. (The supervisor is a plain thread, not an executor: it may block.)

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Args;

/// The most nodes: one per loopback address 127.0.0.1 ..= 127.0.0.N.
pub const NODES_MAX: u8 = 32;
/// How long every node together may take to print its ready line.
pub const START_WAIT: Duration = Duration::from_secs(60);
/// How long a node may take to stop after SIGTERM before it is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(30);
/// The cluster name every dev-cluster node uses.
pub const CLUSTER_NAME: &str = "dev";

/// Flags of `kvs dev-cluster`.
#[derive(Args, Debug, Clone)]
pub struct DevClusterArgs {
    /// Number of nodes (1 to 32), on 127.0.0.1 .. 127.0.0.N.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=NODES_MAX as i64))]
    pub nodes: u8,
    /// Directory for the nodes' data, logs and the cluster secret (created if missing).
    #[arg(long, default_value = "kvs-dev-cluster")]
    pub dir: PathBuf,
    /// The port every node listens on (each on its own address); shard i uses PORT+1+i.
    #[arg(long, default_value_t = 7000, value_parser = clap::value_parser!(u16).range(1..=64000))]
    pub port: u16,
    /// Data shards per node [default: the server's default].
    #[arg(long)]
    pub shards: Option<u16>,
    /// Further `kvs server` flags for every node, after `--` (e.g. `-- --memtable-mb 16`).
    #[arg(last = true)]
    pub server_args: Vec<String>,
}

/// A node the supervisor started.
struct Node {
    number: u8,
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Child,
    /// Set once the node has exited (and been reported).
    exited: Option<ExitStatus>,
}

/// The loopback address of node `number` (1-based).
pub fn node_addr(number: u8, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, number), port))
}

/// Runs the dev cluster until SIGINT or SIGTERM; returns the process exit code.
pub fn run(args: &DevClusterArgs) -> anyhow::Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let secret_file = cluster_secret_file(&dir)?;
    let exe = std::env::current_exe()?;
    let addrs: Vec<SocketAddr> = (1..=args.nodes).map(|n| node_addr(n, args.port)).collect();

    let (ready_tx, ready_rx) = mpsc::channel::<(u8, Result<String, String>)>();
    let mut nodes = Vec::with_capacity(usize::from(args.nodes));
    for (i, addr) in addrs.iter().enumerate() {
        let number = i as u8 + 1;
        let node_dir = dir.join(format!("node-{number}"));
        std::fs::create_dir_all(&node_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", node_dir.display()))?;
        let log = node_dir.join("server.log");
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", log.display()))?;
        let seeds: Vec<String> =
            addrs.iter().filter(|a| *a != addr).map(ToString::to_string).collect();
        let mut cmd = Command::new(&exe);
        cmd.arg("server")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(node_dir.join("data"))
            .arg("--cluster-name")
            .arg(CLUSTER_NAME)
            .arg("--cluster-secret-file")
            .arg(&secret_file);
        if !seeds.is_empty() {
            cmd.arg("--seeds").arg(seeds.join(","));
        }
        if let Some(s) = args.shards {
            cmd.arg("--shards").arg(s.to_string());
        }
        // A node outlives no supervisor: if this process dies (even by SIGKILL), the kernel
        // sends each node SIGTERM, which stops it cleanly.
        let supervisor = std::process::id();
        // SAFETY: prctl(2) and getppid(2) are async-signal-safe and the closure allocates
        // nothing, as required between fork and exec in a multi-threaded process.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor may have died between fork and prctl: then no signal comes.
                if u32::try_from(libc::getppid()).ok() != Some(supervisor) {
                    // (No allocation between fork and exec: a raw OS error only.)
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd.args(&args.server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut nodes);
                anyhow::bail!("starting node {number} ({}): {e}", exe.display());
            }
        };
        if let Some(stdout) = child.stdout.take() {
            let tx = ready_tx.clone();
            std::thread::spawn(move || watch_stdout(number, stdout, tx));
        }
        nodes.push(Node { number, addr: *addr, dir: node_dir, log, child, exited: None });
    }
    drop(ready_tx);

    println!("starting {} nodes in {} ...", args.nodes, dir.display());
    let mut ready = vec![None::<String>; nodes.len()];
    let deadline = Instant::now() + START_WAIT;
    while ready.iter().any(Option::is_none) {
        if stop.load(Ordering::SeqCst) {
            stop_all(&mut nodes);
            return Ok(0);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let waiting: Vec<String> = nodes
                .iter()
                .filter(|n| ready[usize::from(n.number - 1)].is_none())
                .map(|n| format!("node {} (log {})", n.number, n.log.display()))
                .collect();
            stop_all(&mut nodes);
            anyhow::bail!("not ready within {} s: {}", START_WAIT.as_secs(), waiting.join(", "));
        }
        match ready_rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok((number, Ok(line))) => ready[usize::from(number - 1)] = Some(line),
            Ok((number, Err(reason))) => {
                let log = nodes[usize::from(number - 1)].log.clone();
                stop_all(&mut nodes);
                anyhow::bail!(
                    "node {number} did not start: {reason}\n--- last lines of {} ---\n{}",
                    log.display(),
                    log_tail(&log, 20)
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
    }
    print_table(&nodes, &ready);
    println!("cluster ready: {} nodes; Ctrl-C stops them", nodes.len());
    let _ = std::io::stdout().flush();

    loop {
        if stop.load(Ordering::SeqCst) {
            println!("stopping {} nodes ...", nodes.iter().filter(|n| n.exited.is_none()).count());
            let clean = stop_all(&mut nodes);
            println!("stopped");
            return Ok(if clean { 0 } else { 1 });
        }
        for node in nodes.iter_mut().filter(|n| n.exited.is_none()) {
            if let Ok(Some(status)) = node.child.try_wait() {
                node.exited = Some(status);
                eprintln!(
                    "node {} ({}) exited: {status}; log: {}",
                    node.number,
                    node.addr,
                    node.log.display()
                );
            }
        }
        if nodes.iter().all(|n| n.exited.is_some()) {
            eprintln!("every node has exited");
            return Ok(1);
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

/// Forwards a node's ready line (or why it never came) to the supervisor, then drains the
/// rest of its stdout so the node never blocks on a full pipe.
fn watch_stdout(
    number: u8,
    stdout: std::process::ChildStdout,
    tx: mpsc::Sender<(u8, Result<String, String>)>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let outcome = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("kvs server ready:") => break Ok(line),
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Err(format!("reading its output: {e}")),
            None => break Err("it exited before it was ready".to_string()),
        }
    };
    let _ = tx.send((number, outcome));
    for _ in lines {}
}

/// SIGTERM to every running node, then waits for each (at most [`STOP_WAIT`] in all) and kills
/// what is left. Returns whether every node stopped cleanly (exit status 0).
fn stop_all(nodes: &mut [Node]) -> bool {
    for node in nodes.iter().filter(|n| n.exited.is_none()) {
        if let Ok(pid) = i32::try_from(node.child.id()) {
            // SAFETY: kill(2) with a pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + STOP_WAIT;
    let mut clean = true;
    for node in nodes.iter_mut() {
        if let Some(status) = node.exited {
            clean &= status.success();
            continue;
        }
        let status = loop {
            match node.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::park_timeout(Duration::from_millis(50))
                }
                Ok(None) | Err(_) => break None,
            }
        };
        match status {
            Some(status) => {
                clean &= status.success();
                if !status.success() {
                    eprintln!("node {} exited: {status}; log: {}", node.number, node.log.display());
                }
                node.exited = Some(status);
            }
            None => {
                clean = false;
                eprintln!(
                    "node {} did not stop within {} s of SIGTERM; killing it (log: {})",
                    node.number,
                    STOP_WAIT.as_secs(),
                    node.log.display()
                );
                let _ = node.child.kill();
                node.exited = node.child.wait().ok();
            }
        }
    }
    clean
}

/// The file holding the dev cluster's secret, made (random, owner-only) at the first start.
fn cluster_secret_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("cluster-secret");
    if !path.exists() {
        use rand::Rng;
        use std::os::unix::fs::OpenOptionsExt;
        let secret: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .take(32)
            .map(char::from)
            .collect();
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
        writeln!(f, "{secret}")?;
        f.sync_all()?;
    }
    Ok(path)
}

fn print_table(nodes: &[Node], ready: &[Option<String>]) {
    println!("{:<5} {:<18} {:<18} {:<8} data", "node", "address", "node id", "pid");
    for (node, line) in nodes.iter().zip(ready) {
        let id = line
            .as_deref()
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("node=")))
            .unwrap_or("?");
        println!(
            "{:<5} {:<18} {:<18} {:<8} {}",
            node.number,
            node.addr.to_string(),
            id,
            node.child.id(),
            node.dir.display()
        );
    }
}

/// The last `n` lines of a log file (empty if unreadable).
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_consecutive_loopback_addresses_on_one_port() {
        assert_eq!(node_addr(1, 7000).to_string(), "127.0.0.1:7000");
        assert_eq!(node_addr(3, 7000).to_string(), "127.0.0.3:7000");
    }

    #[test]
    fn the_secret_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = cluster_secret_file(dir.path()).unwrap();
        let first = std::fs::read_to_string(&p).unwrap();
        assert_eq!(first.trim().len(), 32);
        assert_eq!(cluster_secret_file(dir.path()).unwrap(), p);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
