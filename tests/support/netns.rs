//! A private test network made of Linux network namespaces, for process tests that need to cut
//! a node off (partitions). [`TestNet::new`] builds, for one test:
//!
//! ```text
//!   root namespace:   bridge kvb<pid>_<seq>  (no address: it only switches frames)
//!                       |            |            |
//!                     kvh.._1      kvh.._2      kvh.._3     veth ends on the bridge
//!                       |            |            |
//!   namespaces:       eth0         eth0         eth0        kvs-<pid>-<seq>-<i>
//!                   10.213.X.1   10.213.X.2   10.213.X.3    (plus lo, up)
//! ```
//!
//! Every host has static (permanent) neighbour entries for the others, so no ARP is needed and a
//! cut host's packets simply vanish instead of ending in "no route to host" once ARP gives up.
//! The namespaces have no default route: a process inside one can reach only the other test
//! hosts, never another address.
//!
//! ## Cutting a host
//! [`TestNet::cut`] puts a `pfifo` qdisc with a limit of 0 packets on both ends of the host's
//! veth pair (egress of `eth0` inside the namespace, and egress of the bridge-side end toward
//! it). Every packet in either direction is dropped silently: no RST, no ICMP, links and
//! carrier stay up, routes stay, and a sender's TCP just retransmits into the void, which is
//! what a real partition (a dead switch port, a firewall DROP) looks like. A `pfifo` with limit
//! 0 never enqueues and, unlike larger limits, is not allowed to bypass its queue (the kernel's
//! `fifo_init` sets `TCQ_F_CAN_BYPASS` only when the limit is at least 1 packet). Alternatives
//! and why not: link down on the veth is not silent (the sender inside sees `ENETUNREACH` at
//! once, its routes go away); `nft`/`iptables` are not installed on CI; `tc` classifiers
//! (`matchall`, `u32`) and `netem` are not built into the CI kernel, while `pfifo` is part of
//! every kernel with `tc`. [`TestNet::heal`] deletes the two qdiscs.
//!
//! ## Names and cleanup
//! Names carry the test process id and a per-process sequence number, so parallel test
//! processes and several nets in one process never collide (interface names stay within the
//! kernel's 15 bytes: the pid is written in hex). The subnet's third byte comes from the pid and
//! is checked unused in the root namespace; two test nets that happen to pick the same subnet
//! do not interfere anyway, since each is its own bridge and namespaces. `Drop` deletes every
//! namespace, veth and the bridge the net made, also while unwinding from a panic; and
//! [`TestNet::new`] first removes what earlier test processes left behind when they were
//! killed (names of our pattern whose pid is no longer running). Both first SIGKILL any process
//! still inside such a namespace (only tests put processes there), so no server outlives it.
//!
//! ## Requirements
//! Root and iproute2 (`ip`, `tc`). [`TestNet::available_or_skip`] says whether they are here;
//! when not, it panics under `CI=true` and prints a loud skip notice otherwise.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{kvs_bin, Server};

/// Third byte of the subnets tried: 10.213.X.0/24.
const SUBNET_FIRST_BYTES: &str = "10.213";
/// Hosts one net may have (host addresses are .1 ..= .HOSTS_MAX).
const HOSTS_MAX: usize = 9;

static NET_SEQ: AtomicU32 = AtomicU32::new(0);

/// A private network of `hosts` namespaces on one bridge; see the module docs.
pub struct TestNet {
    /// `<pid hex>_<seq>`, the part of every interface name that makes it ours.
    tag: String,
    /// `kvs-<pid>-<seq>`; namespace i is `<ns_prefix>-<i>`.
    ns_prefix: String,
    /// `10.213.X`.
    subnet: String,
    hosts: usize,
    /// What exists now, for Drop: namespaces made, bridge made.
    namespaces: Vec<String>,
    bridge: Option<String>,
}

impl TestNet {
    /// Whether this machine can build a [`TestNet`] (root, `ip` and `tc` present). When it
    /// cannot: panics when `CI=true` (CI must run the test), else prints a loud notice naming
    /// `test` and returns false, and the caller returns early.
    pub fn available_or_skip(test: &str) -> bool {
        let Err(why) = environment() else { return true };
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: cannot build the test network under CI=true: {why}");
        }
        // Straight to the process's stderr: the test harness captures `eprintln!` of a passing
        // test, and a skip must never pass unseen.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED {test}: {why}\n\
             !!! It needs root and iproute2 (ip, tc); CI runs it (and fails there instead).\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        false
    }

    /// Builds a net of `hosts` namespaces (1..=9). Panics with the failing `ip` command when a
    /// step fails; whatever was made by then is removed by Drop.
    pub fn new(hosts: usize) -> TestNet {
        assert!((1..=HOSTS_MAX).contains(&hosts), "1..={HOSTS_MAX} hosts, not {hosts}");
        cleanup_leftovers();
        let pid = std::process::id();
        let seq = NET_SEQ.fetch_add(1, Ordering::Relaxed);
        assert!(seq < 100, "at most 100 test nets per process");
        let mut net = TestNet {
            tag: format!("{pid:x}_{seq}"),
            ns_prefix: format!("kvs-{pid}-{seq}"),
            subnet: pick_subnet(pid.wrapping_add(seq)),
            hosts,
            namespaces: Vec::new(),
            bridge: None,
        };
        let bridge = format!("kvb{}", net.tag);
        assert!(bridge.len() <= 15 && net.veth(hosts).len() <= 15, "interface names too long");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        net.bridge = Some(bridge.clone());
        ip(&["link", "set", &bridge, "up"]);
        let mut macs = Vec::new();
        for i in 1..=hosts {
            let ns = net.ns(i);
            ip(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            // The namespace end is made inside the namespace, so its name needs no uniqueness.
            let veth = net.veth(i);
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            ip(&["link", "set", &veth, "master", &bridge, "up"]);
            let cidr = format!("{}/24", net.addr(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            macs.push(mac_of(&ns));
        }
        for i in 1..=hosts {
            for (j, mac) in (1..=hosts).zip(&macs) {
                if i != j {
                    let ns = net.ns(i);
                    let peer = net.addr(j);
                    let neigh = ["neigh", "replace", &peer, "lladdr", mac, "dev", "eth0"];
                    ip(&[&["-n", &ns][..], &neigh, &["nud", "permanent"]].concat());
                }
            }
        }
        net
    }

    /// Name of host `i`'s namespace (1-based).
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.ns_prefix)
    }

    /// Host `i`'s address, e.g. `10.213.77.2`.
    pub fn addr(&self, i: usize) -> String {
        assert!((1..=self.hosts).contains(&i), "no host {i}");
        format!("{}.{i}", self.subnet)
    }

    /// The bridge-side end of host `i`'s veth pair.
    fn veth(&self, i: usize) -> String {
        format!("kvh{}_{i}", self.tag)
    }

    /// A command that runs `program` inside host `i`'s namespace (`ip netns exec`, which
    /// execs the program in place: the child's pid is the program's, so killing it works).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i)]).arg(program);
        cmd
    }

    /// Runs `kvs args...` inside host `i` and returns its output.
    pub fn kvs(&self, i: usize, args: &[&str]) -> Output {
        self.command(i, kvs_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("spawn kvs in a namespace")
    }

    /// Cuts host `i` off: every packet to and from it is dropped silently (see module docs).
    pub fn cut(&self, i: usize) {
        let (ns, veth) = (self.ns(i), self.veth(i));
        tc(&["qdisc", "replace", "dev", &veth, "root", "pfifo", "limit", "0"]);
        tc(&["-n", &ns, "qdisc", "replace", "dev", "eth0", "root", "pfifo", "limit", "0"]);
    }

    /// Undoes [`TestNet::cut`].
    pub fn heal(&self, i: usize) {
        let (ns, veth) = (self.ns(i), self.veth(i));
        tc(&["qdisc", "del", "dev", &veth, "root"]);
        tc(&["-n", &ns, "qdisc", "del", "dev", "eth0", "root"]);
    }

    /// Starts `kvs server --listen <addr(i)>:<port>` inside host `i` with `data_dir` and
    /// `extra` flags and waits (at most 60 s) for its ready line, like [`Server::start_at`].
    pub fn start_server(&self, i: usize, port: u16, data_dir: &Path, extra: &[&str]) -> Server {
        let listen = format!("{}:{port}", self.addr(i));
        Server::spawn(self.command(i, kvs_bin()), &listen, data_dir, extra)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end and so the pair; the explicit link delete
        // covers a namespace that processes still hold open.
        for (i, ns) in self.namespaces.iter().enumerate() {
            kill_processes_in(ns);
            let veth = self.veth(i + 1);
            let _ = quiet(Command::new("ip").args(["link", "del", &veth]));
            if let Err(e) = quiet(Command::new("ip").args(["netns", "del", ns])) {
                eprintln!("TestNet: could not delete namespace {ns}: {e}");
            }
        }
        if let Some(bridge) = &self.bridge {
            if let Err(e) = quiet(Command::new("ip").args(["link", "del", bridge])) {
                eprintln!("TestNet: could not delete bridge {bridge}: {e}");
            }
        }
    }
}

/// Ok when root, `ip` and `tc` are here; else why not.
fn environment() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| format!("{e}"))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!("not root (effective uid {euid})"));
    }
    for tool in ["ip", "tc"] {
        match Command::new(tool).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(format!("`{tool} -V` failed: {s}")),
            Err(e) => return Err(format!("`{tool}` (iproute2) not found: {e}")),
        }
    }
    Ok(())
}

/// Runs a command, returning its stderr as the error when it fails.
fn quiet(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip(args: &[&str]) -> String {
    quiet(Command::new("ip").args(args)).unwrap_or_else(|e| panic!("building the test net: {e}"))
}

fn tc(args: &[&str]) -> String {
    quiet(Command::new("tc").args(args)).unwrap_or_else(|e| panic!("tc: {e}"))
}

/// The MAC address of `eth0` in namespace `ns`.
fn mac_of(ns: &str) -> String {
    let out = ip(&["-n", ns, "-o", "link", "show", "eth0"]);
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {out:?}"))
        .to_string()
}

/// `10.213.X` with X in 1..=250 derived from `seed`, the first not in use in the root
/// namespace (no address or route there mentions it).
fn pick_subnet(seed: u32) -> String {
    let used =
        format!("{}\n{}", ip(&["-o", "addr", "show"]), ip(&["route", "show", "table", "all"]));
    for k in 0..250u32 {
        let x = (seed.wrapping_add(k) % 250) + 1;
        let subnet = format!("{SUBNET_FIRST_BYTES}.{x}");
        if !used.contains(&format!("{subnet}.")) {
            return subnet;
        }
    }
    panic!("every {SUBNET_FIRST_BYTES}.X.0/24 is in use in the root namespace");
}

/// SIGKILLs every process still inside namespace `ns` (ours: only a test puts processes
/// there), so that deleting the namespace really ends it and no server outlives its test.
fn kill_processes_in(ns: &str) {
    let pids = quiet(Command::new("ip").args(["netns", "pids", ns])).unwrap_or_default();
    for pid in pids.split_whitespace().filter(|p| p.parse::<u32>().is_ok()) {
        let _ = quiet(Command::new("kill").args(["-KILL", pid]));
    }
}

fn pid_running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces `kvs-<pid>-<seq>-<i>` and links `kvb<hex pid>_<seq>` /
/// `kvh<hex pid>_<seq>_<i>` whose pid is not running (left by a killed test process).
fn cleanup_leftovers() {
    let netns = quiet(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    for name in netns.lines().filter_map(|l| l.split_whitespace().next()) {
        let parts: Vec<&str> = name.split('-').collect();
        let [_, pid, seq, host] = parts.as_slice() else { continue };
        if !name.starts_with("kvs-") || seq.parse::<u32>().is_err() || host.parse::<u32>().is_err()
        {
            continue;
        }
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !pid_running(pid) {
            eprintln!("TestNet: removing namespace {name} left by dead process {pid}");
            kill_processes_in(name);
            let _ = quiet(Command::new("ip").args(["netns", "del", name]));
        }
    }
    let links = quiet(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_default();
    for line in links.lines() {
        // "12: kvh4d2_0_1@if11: <...": the name is the second field, up to '@' or ':'.
        let Some(name) = line.split_whitespace().nth(1) else { continue };
        let name = name.trim_end_matches(':');
        let name = name.split('@').next().unwrap_or(name);
        let Some(rest) = name.strip_prefix("kvb").or_else(|| name.strip_prefix("kvh")) else {
            continue;
        };
        let mut parts = rest.split('_');
        let Some(Ok(pid)) = parts.next().map(|p| u32::from_str_radix(p, 16)) else { continue };
        if parts.next().and_then(|s| s.parse::<u32>().ok()).is_none() {
            continue;
        }
        if !pid_running(pid) {
            eprintln!("TestNet: removing link {name} left by dead process {pid}");
            let _ = quiet(Command::new("ip").args(["link", "del", name]));
        }
    }
}
