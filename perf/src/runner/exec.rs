//! The glommio shell: client threads, their connections and tasks, and the progress channel.
//!
//! Everything that decides something lives in [`super::schedule`] (when an operation may start,
//! what it records) or [`super::stats`]; this file only carries it out. Per client thread:
//!
//! 1. connect `--connections` drivers;
//! 2. wait on a barrier for the other threads, so that all of them start the clock together;
//! 3. spawn `connections × pipeline` worker tasks, `pipeline` per driver, each with its own
//!    seeded [`OpSource`]; each loops "take a ticket, (open loop: sleep until its slot), run the
//!    operation, record" until the thread's [`TicketPlan`] says stop;
//! 4. every progress interval, send a [`Snapshot`] to the calling thread;
//! 5. close the drivers and return the thread's [`RunStats`].
//!
//! A task has one request in flight at a time, so a connection never has more than `pipeline`
//! and the run never more than `threads × connections × pipeline`, in open loop too.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use super::options::BenchConfig;
use super::progress::{ProgressBoard, Snapshot};
use super::schedule::{
    duration_ns, latency_from_intended_ns, ns_to_us, service_time_ns, split_evenly, task_seed,
    OpenLoopSchedule, TicketPlan,
};
use super::source::OpSource;
use super::stats::{new_histogram, Outcome, RunStats};
use crate::driver::{Driver, DriverError, DriverOptions, Target};
use crate::workload::{Op, OpKind};

/// Runs the whole load: one glommio executor per `--threads`, merged stats at the end. Prints
/// progress lines on stderr when the config asks for them.
pub fn execute<D, S, F>(
    target: &Target,
    config: &BenchConfig,
    make_source: F,
) -> anyhow::Result<RunStats>
where
    D: Driver,
    S: OpSource,
    F: Fn(u64) -> S + Send + Sync + 'static,
{
    config.validate().map_err(anyhow::Error::msg)?;
    if config.pin {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        anyhow::ensure!(
            config.threads <= cpus,
            "--pin needs a CPU per thread: {} threads, {cpus} CPUs",
            config.threads
        );
    }
    let make_source = Arc::new(make_source);
    let barrier = Arc::new(Barrier::new(config.threads));
    let connect_failed = Arc::new(AtomicBool::new(false));
    let (tx, rx) = sync_channel::<Snapshot>(config.threads * 8);
    let mut handles = Vec::with_capacity(config.threads);
    for thread in 0..config.threads {
        let placement = if config.pin { Placement::Fixed(thread) } else { Placement::Unbound };
        let setup = ThreadSetup {
            thread,
            target: target.clone(),
            config: config.clone(),
            barrier: barrier.clone(),
            connect_failed: connect_failed.clone(),
            tx: tx.clone(),
        };
        let make_source = make_source.clone();
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("kvs-bench-{thread}"))
            .spawn(move || async move { run_thread::<D, S, F>(setup, make_source).await });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                // The threads already started wait on the barrier for all `threads`: stand in
                // for the missing ones so that they see the failure and stop.
                connect_failed.store(true, Ordering::SeqCst);
                for _ in thread..config.threads {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || barrier.wait());
                }
                for h in handles {
                    let _ = h.join();
                }
                anyhow::bail!("starting client thread {thread}: {e}");
            }
        }
    }
    drop(tx);
    if config.progress_interval_ms > 0 {
        let mut board = ProgressBoard::new(config.threads, config.progress_interval_ms);
        // Ends when every thread has dropped its sender, that is, has finished.
        while let Ok(s) = rx.recv() {
            if let Some(line) = board.on_snapshot(s) {
                eprintln!("{line}");
            }
        }
    }
    let mut total = RunStats::default();
    let mut first_error = None;
    for (thread, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(stats)) => total.merge(&stats),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("client thread {thread} failed: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// What a client thread is given.
struct ThreadSetup {
    thread: usize,
    target: Target,
    config: BenchConfig,
    barrier: Arc<Barrier>,
    /// Set by a thread that could not connect, so that the others give up after the barrier.
    connect_failed: Arc<AtomicBool>,
    tx: SyncSender<Snapshot>,
}

/// The state the tasks of one thread share (on one executor: `Rc`, `Cell`, `RefCell`).
struct ThreadState {
    start: Instant,
    plan: RefCell<TicketPlan>,
    stats: RefCell<RunStats>,
    /// Latest answer of a measured operation, ns after the start.
    last_done_ns: Cell<u64>,
    verify: bool,
}

impl ThreadState {
    fn now_ns(&self) -> u64 {
        duration_ns(self.start.elapsed())
    }
}

async fn run_thread<D, S, F>(setup: ThreadSetup, make_source: Arc<F>) -> anyhow::Result<RunStats>
where
    D: Driver,
    S: OpSource,
    F: Fn(u64) -> S + Send + Sync + 'static,
{
    let ThreadSetup { thread, target, config, barrier, connect_failed, tx } = setup;
    let opts = DriverOptions {
        timeout: config.timeout(),
        pipeline: config.pipeline,
        consistency: config.consistency.clone(),
    };
    let mut drivers = Vec::with_capacity(config.connections);
    let mut connect_error = None;
    for c in 0..config.connections {
        match D::connect(&target, &opts).await {
            Ok(d) => drivers.push(Rc::new(d)),
            Err(e) => {
                connect_error = Some(anyhow::anyhow!(
                    "thread {thread} connection {c}: connecting to {target}: {e}"
                ));
                connect_failed.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    // Blocking here is fine: nothing else runs on this executor yet.
    barrier.wait();
    if let Some(e) = connect_error {
        close_all(&drivers).await;
        return Err(e);
    }
    if connect_failed.load(Ordering::SeqCst) {
        close_all(&drivers).await;
        return Err(anyhow::anyhow!("another client thread could not connect"));
    }

    let schedule =
        config.rate.map(|rate| OpenLoopSchedule::for_thread(rate, config.threads, thread));
    let budget = config.operations.map(|n| split_evenly(n, config.threads, thread));
    let plan = TicketPlan::new(
        schedule,
        duration_ns(config.warmup()),
        config.duration().map(duration_ns),
        budget,
    );
    let state = Rc::new(ThreadState {
        start: Instant::now(),
        plan: RefCell::new(plan),
        stats: RefCell::new(RunStats::default()),
        last_done_ns: Cell::new(0),
        verify: config.verify,
    });

    let mut workers = Vec::with_capacity(config.connections * config.pipeline);
    for (c, driver) in drivers.iter().enumerate() {
        for p in 0..config.pipeline {
            let source = make_source(task_seed(config.seed, thread, c * config.pipeline + p));
            let task = worker::<D, S>(state.clone(), driver.clone(), source);
            workers.push(glommio::spawn_local(task));
        }
    }
    let progress = (config.progress_interval_ms > 0).then(|| {
        let interval = Duration::from_millis(config.progress_interval_ms);
        let (state, tx) = (state.clone(), tx.clone());
        glommio::spawn_local(async move {
            for tick in 1.. {
                glommio::timer::sleep(interval).await;
                let _ = tx.try_send(snapshot(&state, thread, tick, false));
            }
        })
    });
    for w in workers {
        w.await;
    }
    if let Some(p) = progress {
        p.cancel().await;
        let _ = tx.try_send(snapshot(&state, thread, u64::MAX, true));
    }
    close_all(&drivers).await;

    let mut stats = state.stats.borrow().clone();
    let measure_start_ns = state.plan.borrow().measure_start_ns();
    stats.measured_ns = state.last_done_ns.get().saturating_sub(measure_start_ns);
    Ok(stats)
}

async fn close_all<D: Driver>(drivers: &[Rc<D>]) {
    for d in drivers {
        d.close().await;
    }
}

fn snapshot(state: &ThreadState, thread: usize, tick: u64, finished: bool) -> Snapshot {
    let stats = state.stats.borrow();
    let mut latency_us = new_histogram();
    for s in stats.ops.values() {
        let _ = latency_us.add(&s.latency_us);
    }
    let (completed, errors) = stats.totals();
    let measuring = state.now_ns() >= state.plan.borrow().measure_start_ns();
    Snapshot {
        thread,
        tick,
        measuring,
        completed,
        warmup_ops: stats.warmup_ops,
        errors,
        latency_us,
        finished,
    }
}

/// One operation with its bytes made ready before the clock starts.
struct Prepared {
    op: Op,
    key: Vec<u8>,
    /// The value to write (update, insert, read-modify-write).
    value: Option<Vec<u8>>,
}

fn prepare<S: OpSource>(source: &mut S, op: Op) -> Prepared {
    let key = source.key(op.key_index);
    let value = match op.kind {
        OpKind::Update | OpKind::Insert | OpKind::ReadModifyWrite => Some(source.value(&key)),
        OpKind::Read | OpKind::Delete => None,
    };
    Prepared { op, key, value }
}

/// One pipeline slot: takes tickets until the plan says stop.
async fn worker<D: Driver, S: OpSource>(state: Rc<ThreadState>, driver: Rc<D>, mut source: S) {
    loop {
        let now_ns = state.now_ns();
        let Some(ticket) = state.plan.borrow_mut().take(now_ns) else { break };
        let Some(op) = source.next_op() else { break };
        let prepared = prepare(&mut source, op);
        let wait_ns = ticket.intended_ns.saturating_sub(state.now_ns());
        if wait_ns > 0 {
            glommio::timer::sleep(Duration::from_nanos(wait_ns)).await;
        }
        let sent_ns = state.now_ns();
        let outcome = perform(&*driver, &source, &prepared, state.verify).await;
        let done_ns = state.now_ns();
        let open_loop = state.plan.borrow().is_open_loop();
        {
            let mut stats = state.stats.borrow_mut();
            if ticket.measured {
                let (latency_ns, service_us) = if open_loop {
                    let service = ns_to_us(service_time_ns(sent_ns, done_ns));
                    (latency_from_intended_ns(ticket.intended_ns, done_ns), Some(service))
                } else {
                    (service_time_ns(sent_ns, done_ns), None)
                };
                stats.record(op.kind, ns_to_us(latency_ns), service_us, &outcome);
                state.last_done_ns.set(state.last_done_ns.get().max(done_ns));
            } else {
                stats.warmup_ops += 1;
            }
        }
        // An operation that completes without waiting (a dead connection fails at once) must
        // not starve the timers and the other tasks.
        glommio::yield_if_needed().await;
    }
}

/// Runs one operation on the driver and judges its answer.
async fn perform<D: Driver, S: OpSource>(
    driver: &D,
    source: &S,
    p: &Prepared,
    verify: bool,
) -> Outcome {
    let write = |r: Result<(), DriverError>| match r {
        Ok(()) => Outcome::Ok,
        Err(e) => Outcome::Failed(e.to_string()),
    };
    let value = p.value.as_deref().unwrap_or_default();
    match p.op.kind {
        OpKind::Read => {
            judge_read(source, p.op.key_index, &p.key, driver.get(&p.key).await, verify)
        }
        OpKind::Update | OpKind::Insert => write(driver.put(&p.key, value).await),
        OpKind::Delete => write(driver.delete(&p.key).await),
        OpKind::ReadModifyWrite => {
            let read = judge_read(source, p.op.key_index, &p.key, driver.get(&p.key).await, verify);
            if let Outcome::Failed(_) = read {
                return read;
            }
            match write(driver.put(&p.key, value).await) {
                Outcome::Ok => read,
                failed => failed,
            }
        }
    }
}

/// The outcome of a read: a driver error fails it; with `verify`, a wrong value or a missing
/// key that must exist is a mismatch.
pub(crate) fn judge_read<S: OpSource>(
    source: &S,
    key_index: u64,
    key: &[u8],
    answer: Result<Option<Vec<u8>>, DriverError>,
    verify: bool,
) -> Outcome {
    match answer {
        Err(e) => Outcome::Failed(e.to_string()),
        Ok(_) if !verify => Outcome::Ok,
        Ok(Some(v)) => match source.verify(key, &v) {
            Ok(()) => Outcome::Ok,
            Err(why) => Outcome::Mismatch(format!("key {key_index}: {why}")),
        },
        Ok(None) if source.must_exist(key_index) => {
            Outcome::Mismatch(format!("key {key_index} was loaded but is missing"))
        }
        Ok(None) => Outcome::Ok,
    }
}
