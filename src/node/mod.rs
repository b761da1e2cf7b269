//! Bootstrap of a node: `S` shard executors and one cluster-core executor, their listeners and
//! the channels between them, pinning, readiness and clean shutdown.
//!
//! ## Start
//! 1. Validate the config, create the data directory and lock it (one process per directory).
//! 2. Load the node id from `DATA/node-id`, or make one and store it atomically; take a gossip
//!    generation larger than the last one (`DATA/generation`, also stored atomically).
//! 3. Bind every port on the main thread (so a port in use fails the start with a clear error,
//!    and so the topology knows every port before any executor serves it).
//! 4. Build the membership (this node alone, status Up) and the topology it describes; the
//!    cluster core runs gossip ([`crate::transport`]) and publishes every newer topology to
//!    the shards.
//! 5. Start the executors. Each shard opens its engine (WAL recovery) and reports ready; the
//!    node prints one `kvs server ready ...` line on stdout once all have.
//!
//! ## Stop
//! SIGINT or SIGTERM raises a flag every executor watches. Each stops accepting and reading,
//! answers every request already read, flushes responses, waits until every executor has done
//! the same (forwarded requests may still arrive until then), and then closes its engine, which
//! syncs the WAL. A second SIGINT kills the process at once.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::channels::shared_channel::{self, ConnectedReceiver, SharedReceiver, SharedSender};
use glommio::{LocalExecutorBuilder, Placement};
use kvs_shards::Engine;
use kvs_wire::msg::TopologyResponse;
use kvs_wire::peer::{ClusterKey, PEER_BODY_BYTES_MAX};
use kvs_wire::placement::NodeId;

use crate::cluster::gossip::{GossipOptions, Membership, NodeMeta, Status};
use crate::cluster::phi::PhiOptions;
use crate::config::{ConfigError, NodeConfig};
use crate::shard::{serve_listener, ExecutorCtx, ShardMsg, ShardSettings};
use crate::transport::hint_log::{HintLog, HintLogOptions};
use crate::transport::replica::{ReplicaLinks, ReplicaLinksHandle};
use crate::transport::stream::{write_marker, Mover, MoverSettings, BOOTSTRAP_MARKER, LEFT_MARKER};
use crate::transport::{topology_of, ClusterSettings, GossipCore};

/// How long a failed start waits for the other executors before giving up on them.
const FAILED_START_WAIT: Duration = Duration::from_secs(10);

/// Why a node could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("data directory {path} is in use by another kvs process")]
    Locked { path: PathBuf },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("corrupt node id file {path}: {reason}")]
    BadNodeId { path: PathBuf, reason: String },
    #[error("corrupt generation file {path}: {reason}")]
    BadGeneration { path: PathBuf, reason: String },
    #[error(
        "this node left the ring (decommissioned; {path} says so): its data is stale. Remove \
         the data directory to start it as a new node"
    )]
    Decommissioned { path: PathBuf },
    #[error("executor {index} failed: {reason}")]
    Executor { index: usize, reason: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NodeError {
    let path = path.to_path_buf();
    move |source| NodeError::Io { what, path, source }
}

/// Runs a node until SIGINT or SIGTERM. Returns once every executor has stopped cleanly.
pub fn run(config: NodeConfig) -> Result<(), NodeError> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
            .map_err(io_err("registering signal handler for", Path::new("SIGINT/SIGTERM")))?;
        signal_hook::flag::register(sig, stop.clone())
            .map_err(io_err("registering signal handler for", Path::new("SIGINT/SIGTERM")))?;
    }
    run_until(config, stop)
}

/// Runs a node until `stop` becomes true.
pub fn run_until(mut config: NodeConfig, stop: Arc<AtomicBool>) -> Result<(), NodeError> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io_err("creating data directory", &config.data_dir))?;
    // Shards open their files relative to an absolute path, whatever the working directory.
    config.data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(io_err("resolving data directory", &config.data_dir))?;
    let data_dir = config.data_dir.clone();
    let _lock = lock_data_dir(&data_dir)?;
    let left = data_dir.join(LEFT_MARKER);
    if left.exists() {
        return Err(NodeError::Decommissioned { path: left });
    }
    let seeds = config.seed_addrs()?;
    // A node's first start with seeds is a join: it stays Joining until it has copied the
    // ranges it takes over (transport::stream). The marker is written before the node id, so
    // a start that fails after making the id (a bad flag, a busy port) still joins next time,
    // and a crash mid-join joins again.
    let marker = data_dir.join(BOOTSTRAP_MARKER);
    if !data_dir.join("node-id").exists() && !seeds.is_empty() {
        write_marker(&marker).map_err(io_err("creating", &marker))?;
    }
    let node_id = load_or_create_node_id(&data_dir)?;
    let generation = next_generation(&data_dir)?;
    let mut secret = config.cluster_secret_bytes()?;
    if secret.is_empty() {
        // No secret: a node on its own (validate() refuses seeds without one). A random key
        // that exists only in this process keeps every other process out: nobody can join a
        // node that was not given a secret.
        use rand::RngCore;
        secret = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
    }

    let shards = config.shard_count();
    let listen = config.listen_addr()?;
    let node_listener = bind(listen)?;
    let node_addr =
        node_listener.local_addr().map_err(|source| NodeError::Bind { addr: listen, source })?;
    let mut shard_listeners = Vec::with_capacity(usize::from(shards));
    let mut shard_ports = Vec::with_capacity(usize::from(shards));
    for i in 0..shards {
        let port = if listen.port() == 0 { 0 } else { listen.port() + 1 + i };
        let l = bind(SocketAddr::new(listen.ip(), port))?;
        let bound = l.local_addr().map_err(|source| NodeError::Bind { addr: listen, source })?;
        shard_ports.push(bound.port());
        shard_listeners.push(l);
    }
    let gossip_options = GossipOptions {
        phi: PhiOptions {
            threshold: config.phi_threshold,
            bootstrap_interval_ms: u32::try_from(config.gossip_interval_ms).unwrap_or(u32::MAX),
            ..PhiOptions::default()
        },
        suspect_phi: GossipOptions::default().suspect_phi.min(config.phi_threshold),
        ..GossipOptions::default()
    };
    gossip_options
        .validate()
        .map_err(|e| ConfigError::Invalid { field: "phi_threshold", reason: e.to_string() })?;
    let meta = NodeMeta { shard_ports: Arc::from(shard_ports.clone()), token_count: config.vnodes };
    let mut membership =
        Membership::new(NodeId(node_id), node_addr, generation, meta, gossip_options);
    // Every other start serves its ranges at once.
    let joining = !seeds.is_empty() && marker.exists();
    if !joining {
        membership.set_status(Status::Up);
    }
    let topology = Arc::new(topology_of(&membership, config.replication_factor));
    let mut cluster = Some((
        ClusterSettings {
            addr: node_addr,
            seeds,
            key: ClusterKey::derive(&config.cluster_name, &secret),
            cluster_name: config.cluster_name.clone(),
            gossip_interval_ms: config.gossip_interval_ms,
            replication_factor: config.replication_factor,
        },
        membership,
        MoverSettings {
            ring_delay: Duration::from_millis(config.ring_delay_ms),
            gossip_interval: Duration::from_millis(config.gossip_interval_ms),
            page_bytes: config.stream_page_kb.saturating_mul(1024),
            bytes_per_s: config.stream_kb_per_s.saturating_mul(1024),
            marker,
            left_marker: left,
        },
        joining,
    ));
    let settings = ShardSettings {
        node_id,
        shard_count: shards,
        key_bytes_max: config.key_bytes_max,
        value_bytes_max: config.value_bytes_max,
        frame_body_bytes_max: config.frame_body_bytes_max(),
        peer_body_bytes_max: config.frame_body_bytes_max(),
        connection_inflight_max: config.connection_inflight_max,
        connections_max: config.connections_max,
        replica_timeout_ms: config.replica_timeout_ms,
        ring_delay_ms: config.ring_delay_ms,
        standalone: config.seeds.is_empty(),
    };

    let hint_options = (config.hints_mb > 0).then(|| {
        let mut o = HintLogOptions::new(data_dir.join("hints"));
        o.hints.window_ms = config.hint_window_s.saturating_mul(1000);
        o.hints.bytes_max = config.hints_mb.saturating_mul(1 << 20);
        o.hints.replay_bytes_per_s = config.hint_replay_kb.saturating_mul(1024);
        o
    });
    // Executors 0..S are shards; executor S is the cluster core, which serves the node port.
    let executors = usize::from(shards) + 1;
    let (mut senders, mut receivers) = channel_matrix(executors, config.forward_queue_max);
    let placements = placements(executors, config.pin);
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<String, String>)>();
    let drained = Arc::new(AtomicUsize::new(0));
    let mut listeners: Vec<StdListener> = shard_listeners;
    listeners.push(node_listener);

    let mut handles = Vec::with_capacity(executors);
    for (index, listener) in listeners.into_iter().enumerate().rev() {
        let my_senders = senders.pop().unwrap_or_default();
        let my_receivers = receivers.pop().unwrap_or_default();
        let placement = placements.get(index).cloned().unwrap_or(Placement::Unbound);
        let name = if index < usize::from(shards) {
            format!("kvs-shard-{index}")
        } else {
            "kvs-cluster".to_string()
        };
        let is_shard = index < usize::from(shards);
        let mut executor_settings = settings.clone();
        if !is_shard {
            // The node port also carries gossip, whose bodies may exceed a client frame.
            executor_settings.peer_body_bytes_max =
                executor_settings.frame_body_bytes_max.max(PEER_BODY_BYTES_MAX);
        }
        let job = ExecutorJob {
            index,
            is_shard,
            cluster: if is_shard { None } else { cluster.take() },
            settings: executor_settings,
            shard_options: config.shard_options(u16::try_from(index).unwrap_or(0)),
            topology: topology.clone(),
            listener_fd: listener.into_raw_fd(),
            senders: my_senders,
            receivers: my_receivers,
            guard: StartGuard {
                index,
                ready: Some(ready_tx.clone()),
                drained: drained.clone(),
                counted: false,
            },
            stop: stop.clone(),
            drained: drained.clone(),
            executors,
            grace: Duration::from_secs(config.shutdown_grace_s),
            hints: hint_options.clone(),
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&name)
            .spawn(move || job.run())
            .map_err(|e| NodeError::Executor { index, reason: format!("cannot start: {e}") })?;
        handles.push(handle);
    }
    drop(ready_tx);

    let mut failure = None;
    let mut recovered = Vec::new();
    for _ in 0..executors {
        // After one executor failed, its peers may be stuck connecting to it: wait a bounded time.
        let next = if failure.is_some() {
            ready_rx.recv_timeout(FAILED_START_WAIT).map_err(|_| ())
        } else {
            ready_rx.recv().map_err(|_| ())
        };
        match next {
            Ok((_, Ok(note))) => recovered.push(note),
            Ok((index, Err(reason))) => {
                failure.get_or_insert(NodeError::Executor { index, reason });
                stop.store(true, Ordering::SeqCst);
            }
            Err(_) => {
                failure.get_or_insert(NodeError::Executor {
                    index: 0,
                    reason: "exited during start".into(),
                });
                stop.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    if failure.is_none() {
        tracing::info!(node_id = format!("{node_id:016x}"), %node_addr, shards, "node started");
        let ports: Vec<String> = shard_ports.iter().map(|p| p.to_string()).collect();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "kvs server ready: node={node_id:016x} listen={node_addr} shards={shards} shard_ports={} data_dir={}",
            ports.join(","),
            data_dir.display()
        );
        let _ = out.flush();
    }
    if failure.is_some() {
        // A failed start: give the executors a bounded time to stop, then report the failure;
        // the process exits and takes any executor still stuck with it.
        let deadline = std::time::Instant::now() + FAILED_START_WAIT;
        while drained.load(Ordering::SeqCst) < executors && std::time::Instant::now() < deadline {
            std::thread::park_timeout(Duration::from_millis(20));
        }
        return Err(
            failure.unwrap_or(NodeError::Executor { index: 0, reason: "start failed".into() })
        );
    }
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                failure.get_or_insert(NodeError::Executor { index: 0, reason });
            }
            Err(e) => {
                failure.get_or_insert(NodeError::Executor { index: 0, reason: format!("{e}") });
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("node stopped cleanly");
            Ok(())
        }
    }
}

/// Makes sure the node hears from every executor exactly once at start (ready or failed) and
/// once at stop (drained), even when an executor never runs (glommio could not create it) or
/// panics: on drop it reports whatever was not reported.
struct StartGuard {
    index: usize,
    ready: Option<mpsc::Sender<(usize, Result<String, String>)>>,
    drained: Arc<AtomicUsize>,
    counted: bool,
}

impl StartGuard {
    fn report_ready(&mut self, outcome: Result<String, String>) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send((self.index, outcome));
        }
    }

    fn report_drained(&mut self) {
        if !self.counted {
            self.counted = true;
            self.drained.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        self.report_ready(Err(format!("executor {} stopped before it was ready", self.index)));
        self.report_drained();
    }
}

/// What one executor needs; moved into its thread.
struct ExecutorJob {
    index: usize,
    is_shard: bool,
    /// The cluster core's gossip settings and membership; `None` on shards.
    cluster: Option<(ClusterSettings, Membership, MoverSettings, bool)>,
    settings: ShardSettings,
    shard_options: kvs_shards::ShardOptions,
    topology: Arc<TopologyResponse>,
    listener_fd: std::os::fd::RawFd,
    senders: Vec<Option<SharedSender<ShardMsg>>>,
    receivers: Vec<(usize, SharedReceiver<ShardMsg>)>,
    guard: StartGuard,
    stop: Arc<AtomicBool>,
    drained: Arc<AtomicUsize>,
    executors: usize,
    grace: Duration,
    /// The hint log's settings (cluster core only); `None` when hinted handoff is off.
    hints: Option<HintLogOptions>,
}

impl ExecutorJob {
    async fn run(self) -> Result<(), String> {
        let index = self.index;
        let mut guard = self.guard;
        // SAFETY: the fd is a bound, listening TCP socket that this executor now owns alone.
        let listener = unsafe { glommio::net::TcpListener::from_raw_fd(self.listener_fd) };
        // Connecting a channel end waits for its peer end, so connect every end at once.
        let sender_tasks: Vec<_> = self
            .senders
            .into_iter()
            .map(|s| s.map(|s| glommio::spawn_local(s.connect())))
            .collect();
        let receiver_tasks: Vec<_> = self
            .receivers
            .into_iter()
            .map(|(from, r)| (from, glommio::spawn_local(r.connect())))
            .collect();
        let mut peers = Vec::with_capacity(sender_tasks.len());
        for t in sender_tasks {
            peers.push(match t {
                Some(t) => Some(t.await),
                None => None,
            });
        }
        let mut inboxes: Vec<(usize, ConnectedReceiver<ShardMsg>)> =
            Vec::with_capacity(receiver_tasks.len());
        for (from, t) in receiver_tasks {
            inboxes.push((from, t.await));
        }
        let (engine, hlc_floor, note) = if self.is_shard {
            match Engine::open(self.shard_options.clone()).await {
                Ok((engine, report)) => {
                    if let Some(torn) = &report.torn_tail {
                        tracing::warn!(
                            shard = index,
                            "WAL torn tail truncated during recovery: {torn:?}"
                        );
                    }
                    tracing::info!(
                        shard = index,
                        segments = report.segments,
                        records = report.records,
                        "shard recovered"
                    );
                    let floor = report.max_stamp.map(|s| s.hlc).unwrap_or(0);
                    (Some(engine), floor, format!("shard {index}: {} records", report.records))
                }
                Err(e) => {
                    let reason = format!(
                        "opening shard {index} at {}: {e}",
                        self.shard_options.dir.display()
                    );
                    guard.report_ready(Err(reason.clone()));
                    guard.report_drained();
                    return Err(reason);
                }
            }
        } else {
            (None, 0, "cluster core".to_string())
        };

        let ctx = Rc::new(ExecutorCtx::new(
            index,
            self.settings,
            engine,
            hlc_floor,
            self.topology,
            peers,
        ));
        for (_from, inbox) in inboxes {
            let c = ctx.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = inbox.recv().await {
                    c.on_peer_message(msg);
                }
            })
            .detach();
        }
        let hint_log = match self.hints.filter(|_| !self.is_shard) {
            Some(opts) => match HintLog::open(opts.clone()).await {
                Ok((log, _report)) => Some(Rc::new(log)),
                Err(e) => {
                    tracing::error!(
                        dir = %opts.dir.display(),
                        "cannot open the hint log; hinted handoff is off: {e}"
                    );
                    None
                }
            },
            None => None,
        };
        // The mover lives as long as this executor runs (the gossip core holds it weakly).
        let mut _mover = None;
        if let Some((settings, membership, mover_settings, joining)) = self.cluster {
            let links = ReplicaLinks::new(
                NodeId(ctx.settings.node_id),
                settings.cluster_name.clone(),
                settings.key,
                ctx.settings.replica_timeout_ms,
                Rc::downgrade(&ctx),
                hint_log.clone(),
            );
            ctx.set_replica_service(Rc::new(ReplicaLinksHandle(links.clone())));
            let version = ctx.topology().version;
            let core = GossipCore::new(settings, membership, Rc::downgrade(&ctx), version);
            ctx.set_peer_service(core.clone());
            glommio::spawn_local(core.clone().run()).detach();
            let mover = Mover::new(
                NodeId(ctx.settings.node_id),
                mover_settings,
                Rc::downgrade(&ctx),
                core,
                links,
            );
            if joining {
                glommio::spawn_local(mover.clone().join()).detach();
            }
            _mover = Some(mover);
        }
        let accept = glommio::spawn_local(serve_listener(ctx.clone(), listener));
        guard.report_ready(Ok(note));

        while !self.stop.load(Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        ctx.begin_shutdown();
        accept.await;
        ctx.drain_connections(self.grace).await;
        // Other executors may still forward requests here until they have drained too.
        guard.report_drained();
        while self.drained.load(Ordering::SeqCst) < self.executors {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        ctx.stopped.raise();
        let c = &ctx.counters;
        tracing::info!(
            executor = index,
            connections = c.connections.get(),
            served_local = c.served_local.get(),
            forwarded_out = c.forwarded_out.get(),
            served_for_peers = c.served_for_peers.get(),
            overloaded = c.overloaded.get(),
            invalid_frames = c.invalid_frames.get(),
            "executor stopping"
        );
        if let Some(log) = hint_log {
            if let Err(e) = log.close().await {
                tracing::warn!("closing the hint log: {e}");
            }
        }
        if let Some(engine) = ctx.engine.as_ref() {
            engine.close().await.map_err(|e| format!("closing shard {index}: {e}"))?;
        }
        Ok(())
    }
}

/// One bounded single-producer channel for every ordered pair of executors.
/// Returns, per executor, its senders by destination and its receivers with their source.
#[expect(clippy::type_complexity, reason = "a matrix of channel ends, used once at start")]
fn channel_matrix(
    n: usize,
    capacity: usize,
) -> (Vec<Vec<Option<SharedSender<ShardMsg>>>>, Vec<Vec<(usize, SharedReceiver<ShardMsg>)>>) {
    let mut senders: Vec<Vec<Option<SharedSender<ShardMsg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut receivers: Vec<Vec<(usize, SharedReceiver<ShardMsg>)>> =
        (0..n).map(|_| Vec::new()).collect();
    for from in 0..n {
        for to in 0..n {
            if from == to {
                continue;
            }
            let (tx, rx) = shared_channel::new_bounded(capacity);
            if let Some(slot) = senders.get_mut(from).and_then(|row| row.get_mut(to)) {
                *slot = Some(tx);
            }
            if let Some(inbox) = receivers.get_mut(to) {
                inbox.push((from, rx));
            }
        }
    }
    (senders, receivers)
}

/// Pins executor `i` to core `i` when there is a core for every executor; otherwise leaves all
/// unpinned so the kernel can share the cores (more shards than cores still run correctly).
fn placements(executors: usize, pin: bool) -> Vec<Placement> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if pin && cores.len() >= executors {
        cores.iter().take(executors).map(|c| Placement::Fixed(c.id)).collect()
    } else {
        (0..executors).map(|_| Placement::Unbound).collect()
    }
}

fn bind(addr: SocketAddr) -> Result<StdListener, NodeError> {
    StdListener::bind(addr).map_err(|source| NodeError::Bind { addr, source })
}

/// Holds an exclusive lock on `DATA/LOCK` for the life of the process.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, NodeError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("opening lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(NodeError::Locked { path: dir.to_path_buf() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("locking", &path)(e)),
    }
}

/// Reads `DATA/node-id` (16 hex digits), or makes a new id and stores it atomically.
fn load_or_create_node_id(dir: &Path) -> Result<u64, NodeError> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let t = text.trim();
            u64::from_str_radix(t, 16).ok().filter(|id| *id != 0 && t.len() == 16).ok_or_else(
                || NodeError::BadNodeId {
                    path: path.clone(),
                    reason: format!("{t:?} is not 16 hex digits"),
                },
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = new_node_id();
            let tmp = dir.join("node-id.tmp");
            let mut f = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
            writeln!(f, "{id:016x}").map_err(io_err("writing", &tmp))?;
            // IMPORTANT: fsync the file, rename it into place, then fsync the directory, so a
            // crash leaves either no id or the whole id, never a torn one.
            f.sync_all().map_err(io_err("syncing", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err("renaming to", &path))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing directory", dir))?;
            Ok(id)
        }
        Err(e) => Err(io_err("reading", &path)(e)),
    }
}

/// Reads the last gossip generation from `DATA/generation` and stores a larger one: the
/// current Unix time in seconds, or the last plus one when the clock says less (a restart
/// within the same second, or a clock stepped back). Stored atomically, like the node id.
fn next_generation(dir: &Path) -> Result<u64, NodeError> {
    let path = dir.join("generation");
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| NodeError::BadGeneration {
            path: path.clone(),
            reason: format!("{:?} is not a generation number", text.trim()),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let next = now_s.max(last.saturating_add(1)).max(1);
    let tmp = dir.join("generation.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    writeln!(f, "{next}").map_err(io_err("writing", &tmp))?;
    // IMPORTANT: fsync, rename, fsync the directory: a restarted node must never reuse a
    // generation its peers have seen, or its new state would lose to its old one.
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("renaming to", &path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))?;
    Ok(next)
}

/// A random non-zero id from the std hasher's per-process random keys, the time and the pid.
fn new_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_id(dir.path()).unwrap();
        let b = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(a, b);
        std::fs::write(dir.path().join("node-id"), "zz").unwrap();
        assert!(matches!(load_or_create_node_id(dir.path()), Err(NodeError::BadNodeId { .. })));
    }

    #[test]
    fn generation_grows_on_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let a = next_generation(dir.path()).unwrap();
        let b = next_generation(dir.path()).unwrap();
        assert!(b > a && a > 1_000_000_000, "{a} {b}");
        std::fs::write(dir.path().join("generation"), format!("{}\n", u64::MAX / 2)).unwrap();
        assert_eq!(next_generation(dir.path()).unwrap(), u64::MAX / 2 + 1);
    }

    #[test]
    fn data_dir_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        assert!(matches!(lock_data_dir(dir.path()), Err(NodeError::Locked { .. })));
        drop(held);
        lock_data_dir(dir.path()).unwrap();
    }

    #[test]
    fn channel_matrix_connects_every_ordered_pair() {
        let (s, r) = channel_matrix(3, 4);
        for (from, row) in s.iter().enumerate() {
            for (to, slot) in row.iter().enumerate() {
                assert_eq!(slot.is_some(), from != to);
            }
        }
        for (to, inbox) in r.iter().enumerate() {
            let mut froms: Vec<usize> = inbox.iter().map(|(f, _)| *f).collect();
            froms.sort();
            assert_eq!(froms, (0..3).filter(|f| *f != to).collect::<Vec<_>>());
        }
    }
}
