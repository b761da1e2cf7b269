//! The glommio shell of `kvs bench engine`: opens the engine on one executor and runs the
//! phases (see the method in the module docs of [`super`]).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::keys::{make_value, missing_key, present_key, verify_value};
use super::report::{EngineReport, LatencyUs, PhaseReport};
use super::{Benchmark, EngineBenchConfig, EngineUnderTest};

/// Largest latency a histogram holds, ns (10 minutes); longer ones are recorded as this.
const LATENCY_NS_MAX: u64 = 600_000_000_000;
/// How often settling polls the engine.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// Opens the engine with `open` on a fresh glommio executor, runs `config.benchmarks` in order
/// and returns the report. Progress goes to stderr. `open` is called again after each write
/// phase with `--reopen`.
pub fn run<E, F, Fut>(
    config: &EngineBenchConfig,
    command: &str,
    open: F,
) -> anyhow::Result<EngineReport>
where
    E: EngineUnderTest,
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Rc<E>, String>>,
{
    let config = config.clone();
    let command = command.to_string();
    glommio::LocalExecutorBuilder::default()
        .name("kvs-bench-engine")
        .spawn(move || async move { run_on_executor(&config, command, open).await })
        .map_err(|e| anyhow::anyhow!("cannot start the benchmark executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("benchmark executor failed: {e}"))?
}

async fn run_on_executor<E, F, Fut>(
    config: &EngineBenchConfig,
    command: String,
    open: F,
) -> anyhow::Result<EngineReport>
where
    E: EngineUnderTest,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Rc<E>, String>>,
{
    let started = Instant::now();
    let mut engine = open().await.map_err(anyhow::Error::msg).context("opening the engine")?;
    let open_s = started.elapsed().as_secs_f64();
    let mut phases = Vec::with_capacity(config.benchmarks.len());
    // Value generation readers accept: 0 after the fill, +1 per overwrite phase.
    let mut generation = 0u32;
    for (n, &benchmark) in config.benchmarks.iter().enumerate() {
        eprintln!("engine bench: {} ...", benchmark.name());
        let io_before = process_write_bytes();
        let phase_seed = config.seed ^ ((n as u64 + 1) << 56);
        let write_generation = match benchmark {
            Benchmark::Overwrite => generation + 1,
            _ => 0,
        };
        let mut phase =
            run_phase(&engine, config, benchmark, phase_seed, generation, write_generation).await;
        if benchmark.writes() {
            let (settle_s, timed_out) = settle(&*engine, config.settle_timeout_s).await;
            phase.settle_s = settle_s;
            phase.settle_timed_out = timed_out;
            generation = write_generation;
        }
        phase.io_write_bytes = io_before
            .zip(process_write_bytes())
            .map(|(before, after)| after.saturating_sub(before));
        if phase.user_bytes_written > 0 {
            phase.io_write_amplification =
                phase.io_write_bytes.map(|b| b as f64 / phase.user_bytes_written as f64);
        }
        phase.engine = engine.snapshot();
        let last = n + 1 == config.benchmarks.len();
        if config.reopen && benchmark.writes() && !last {
            let t = Instant::now();
            engine.close().await.map_err(anyhow::Error::msg).context("closing the engine")?;
            drop(engine);
            engine = open().await.map_err(anyhow::Error::msg).context("reopening the engine")?;
            phase.reopen_s = Some(t.elapsed().as_secs_f64());
        }
        eprintln!(
            "engine bench: {} done: {} ops in {:.2} s ({:.0} ops/s), {} errors",
            phase.benchmark, phase.ops, phase.elapsed_s, phase.ops_per_sec, phase.errors
        );
        phases.push(phase);
    }
    engine.close().await.map_err(anyhow::Error::msg).context("closing the engine")?;
    Ok(EngineReport { command, config: config.clone(), open_s, phases })
}

/// What the tasks of one phase share.
struct PhaseState {
    /// Operations handed out so far.
    next: Cell<u64>,
    ops: Cell<u64>,
    errors: Cell<u64>,
    verify_errors: Cell<u64>,
    found: Cell<u64>,
    first_error: RefCell<Option<String>>,
    latency_ns: RefCell<Histogram<u64>>,
}

impl PhaseState {
    fn error(&self, verify: bool, e: String) {
        self.errors.set(self.errors.get() + 1);
        if verify {
            self.verify_errors.set(self.verify_errors.get() + 1);
        }
        self.first_error.borrow_mut().get_or_insert(e);
    }
}

/// Runs one benchmark with `config.concurrency` tasks. Reads accept value generations up to
/// `generation`; writes write `write_generation`.
async fn run_phase<E: EngineUnderTest>(
    engine: &Rc<E>,
    config: &EngineBenchConfig,
    benchmark: Benchmark,
    seed: u64,
    generation: u32,
    write_generation: u32,
) -> PhaseReport {
    let total = match benchmark {
        Benchmark::Fillrandom => config.num,
        Benchmark::Readrandom | Benchmark::Readmissing => config.reads,
        Benchmark::Overwrite => config.writes,
    };
    // The fill order: every key once, shuffled (8 bytes a key, bounded by NUM_MAX).
    let order: Rc<Vec<u64>> = Rc::new(if benchmark == Benchmark::Fillrandom {
        let mut v: Vec<u64> = (0..config.num).collect();
        v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        v
    } else {
        Vec::new()
    });
    let histogram = Histogram::new_with_max(LATENCY_NS_MAX, 3)
        .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e:?}"));
    let state = Rc::new(PhaseState {
        next: Cell::new(0),
        ops: Cell::new(0),
        errors: Cell::new(0),
        verify_errors: Cell::new(0),
        found: Cell::new(0),
        first_error: RefCell::new(None),
        latency_ns: RefCell::new(histogram),
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(config.concurrency);
    for t in 0..config.concurrency {
        let (engine, state, order) = (Rc::clone(engine), Rc::clone(&state), Rc::clone(&order));
        let (num, key_bytes, value_bytes) = (config.num, config.key_bytes, config.value_bytes);
        let task_seed = seed.wrapping_add((t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(glommio::spawn_local(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(task_seed);
            let (mut key, mut value) = (Vec::with_capacity(key_bytes), Vec::new());
            loop {
                let n = state.next.get();
                if n >= total {
                    break;
                }
                state.next.set(n + 1);
                let index = match benchmark {
                    Benchmark::Fillrandom => order.get(n as usize).copied().unwrap_or(n),
                    _ => rng.gen_range(0..num),
                };
                let op_start = Instant::now();
                match benchmark {
                    Benchmark::Fillrandom | Benchmark::Overwrite => {
                        present_key(index, key_bytes, &mut key);
                        make_value(index, write_generation, value_bytes, &mut value);
                        if let Err(e) = engine.put(&key, &value).await {
                            state.error(false, format!("put key {index}: {e}"));
                        }
                    }
                    Benchmark::Readrandom => {
                        present_key(index, key_bytes, &mut key);
                        match engine.get(&key).await {
                            Ok(Some(v)) => {
                                state.found.set(state.found.get() + 1);
                                if let Err(e) = verify_value(index, generation, value_bytes, &v) {
                                    state.error(true, e);
                                }
                            }
                            Ok(None) => state.error(true, format!("key {index}: not found")),
                            Err(e) => state.error(false, format!("get key {index}: {e}")),
                        }
                    }
                    Benchmark::Readmissing => {
                        missing_key(index, key_bytes, &mut key);
                        match engine.get(&key).await {
                            Ok(Some(_)) => {
                                state.found.set(state.found.get() + 1);
                                state.error(true, format!("missing key {index}: found a value"));
                            }
                            Ok(None) => {}
                            Err(e) => state.error(false, format!("get missing key {index}: {e}")),
                        }
                    }
                }
                let ns = u64::try_from(op_start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                state.latency_ns.borrow_mut().saturating_record(ns.clamp(1, LATENCY_NS_MAX));
                state.ops.set(state.ops.get() + 1);
            }
        }));
    }
    for task in tasks {
        task.await;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let ops = state.ops.get();
    let user_bytes_written =
        if benchmark.writes() { ops * (config.key_bytes + config.value_bytes) as u64 } else { 0 };
    let latency = LatencyUs::of_ns(&state.latency_ns.borrow());
    let first_error = state.first_error.borrow().clone();
    PhaseReport {
        benchmark: benchmark.name().to_string(),
        ops,
        errors: state.errors.get(),
        verify_errors: state.verify_errors.get(),
        first_error,
        found: state.found.get(),
        elapsed_s,
        ops_per_sec: if elapsed_s > 0.0 { ops as f64 / elapsed_s } else { 0.0 },
        latency,
        settle_s: 0.0,
        settle_timed_out: false,
        reopen_s: None,
        user_bytes_written,
        io_write_bytes: None,
        io_write_amplification: None,
        engine: Default::default(),
    }
}

/// Waits until the engine reports no background work, polling every 10 ms, at most
/// `timeout_s`. Returns the seconds waited and whether the wait timed out.
async fn settle<E: EngineUnderTest>(engine: &E, timeout_s: f64) -> (f64, bool) {
    let started = Instant::now();
    let timeout = Duration::from_secs_f64(timeout_s);
    while engine.background_busy() {
        if started.elapsed() >= timeout {
            return (started.elapsed().as_secs_f64(), true);
        }
        glommio::timer::sleep(SETTLE_POLL).await;
    }
    (started.elapsed().as_secs_f64(), false)
}

/// `write_bytes` of `/proc/self/io`: bytes this process caused to be sent to storage (direct
/// I/O included; io_uring workers are threads of the process). `None` when unreadable.
pub fn process_write_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    parse_proc_io_write_bytes(&text)
}

/// The `write_bytes:` field of a `/proc/<pid>/io` text.
pub fn parse_proc_io_write_bytes(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("write_bytes:")).and_then(|v| v.trim().parse().ok())
}
