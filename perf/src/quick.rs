//! `kvs bench`: a closed-loop measurement of one operation from one client process.
//!
//! `P` tasks share one shard-aware client (so requests are pipelined on one connection per
//! shard); each takes the next operation number until `count` are done. Latency is measured
//! per request from send to answer with an HDR histogram (microseconds, 3 significant digits).
//! Keys are `k` followed by the operation number modulo `keyspace`, zero-padded to `key_size`;
//! a value starts with its key and is padded to `value_size`, so `get` checks that each value
//! it reads belongs to its key (a mismatch counts as an error).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use kvs_wire::client::{Client, ClientOptions};

/// The operation to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum QuickOp {
    Put,
    Get,
    Ping,
}

/// Flags of `kvs bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct QuickArgs {
    /// Node address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: String,
    /// Operation to run.
    #[arg(long, value_enum, default_value = "put")]
    pub op: QuickOp,
    /// Number of operations.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Key size in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys; operation i uses key i mod keyspace [default: count].
    #[arg(long)]
    pub keyspace: Option<u64>,
    /// Per-request timeout, ms.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct QuickReport {
    pub op: QuickOp,
    pub count: u64,
    pub errors: u64,
    pub not_found: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub first_error: Option<String>,
}

impl QuickReport {
    /// Completed operations per second.
    pub fn ops_per_s(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for QuickReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "op {:?}: {} ops in {:.2} s = {:.0} ops/s; errors {}, not found {}",
            self.op,
            self.count,
            self.elapsed.as_secs_f64(),
            self.ops_per_s(),
            self.errors,
            self.not_found
        )?;
        write!(
            f,
            "latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )?;
        if let Some(e) = &self.first_error {
            write!(f, "\nfirst error: {e}")?;
        }
        Ok(())
    }
}

/// The key of operation `i`.
pub fn key_of(i: u64, key_size: usize) -> Vec<u8> {
    let mut k = format!("k{i:0width$}", width = key_size.saturating_sub(1)).into_bytes();
    k.truncate(key_size.max(8));
    k
}

/// The value written for `key`: the key, then filler, `value_size` bytes in all.
pub fn value_of(key: &[u8], value_size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(value_size);
    v.extend(key.iter().take(value_size));
    v.resize(value_size, b'.');
    v
}

/// Runs the benchmark on a fresh glommio executor and returns its report.
pub fn run(args: &QuickArgs) -> anyhow::Result<QuickReport> {
    let args = args.clone();
    anyhow::ensure!(args.key_size >= 8, "--key-size must be at least 8");
    anyhow::ensure!(args.inflight >= 1, "--inflight must be at least 1");
    let handle = glommio::LocalExecutorBuilder::default()
        .name("kvs-bench")
        .spawn(move || async move { run_on_executor(args).await })
        .map_err(|e| anyhow::anyhow!("starting the bench executor: {e}"))?;
    handle.join().map_err(|e| anyhow::anyhow!("bench executor failed: {e}"))?
}

async fn run_on_executor(args: QuickArgs) -> anyhow::Result<QuickReport> {
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(args.timeout_ms),
        ..ClientOptions::default()
    };
    let client = Client::connect(&args.addr, opts)
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let keyspace = args.keyspace.unwrap_or(args.count).max(1);
    let next = Rc::new(Cell::new(0u64));
    let hist = Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let errors = Rc::new(Cell::new(0u64));
    let not_found = Rc::new(Cell::new(0u64));
    let first_error: Rc<RefCell<Option<String>>> = Rc::new(RefCell::new(None));
    let progress_every = (args.count / 10).max(1);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.inflight);
    for _ in 0..args.inflight {
        let (client, next, hist, errors, not_found, first_error, args) = (
            client.clone(),
            next.clone(),
            hist.clone(),
            errors.clone(),
            not_found.clone(),
            first_error.clone(),
            args.clone(),
        );
        tasks.push(glommio::spawn_local(async move {
            loop {
                let i = next.get();
                if i >= args.count {
                    break;
                }
                next.set(i + 1);
                if i > 0 && i % progress_every == 0 {
                    eprintln!(
                        "bench: {i}/{} ops, {:.1} s",
                        args.count,
                        started.elapsed().as_secs_f64()
                    );
                }
                let key = key_of(i % keyspace, args.key_size);
                let t0 = Instant::now();
                let outcome: Result<(), String> = match args.op {
                    QuickOp::Put => {
                        let value = value_of(&key, args.value_size);
                        client.put(&key, &value).await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    QuickOp::Get => match client.get(&key).await {
                        Ok(Some((v, _))) if v == value_of(&key, args.value_size) => Ok(()),
                        Ok(Some((v, _))) => Err(format!(
                            "value of {} bytes read for key {:?} does not belong to it",
                            v.len(),
                            String::from_utf8_lossy(&key)
                        )),
                        Ok(None) => {
                            not_found.set(not_found.get() + 1);
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    QuickOp::Ping => client.ping().await.map_err(|e| e.to_string()),
                };
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                let _ = hist.borrow_mut().record(us.min(60_000_000));
                if let Err(e) = outcome {
                    errors.set(errors.get() + 1);
                    first_error.borrow_mut().get_or_insert(e);
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let elapsed = started.elapsed();
    client.close().await;
    let h = hist.borrow();
    let report = QuickReport {
        op: args.op,
        count: args.count,
        errors: errors.get(),
        not_found: not_found.get(),
        elapsed,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        first_error: first_error.borrow().clone(),
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_values_name_their_key() {
        let k = key_of(42, 16);
        assert_eq!(k, b"k000000000000042".to_vec());
        assert_eq!(key_of(7, 8).len(), 8);
        let v = value_of(&k, 100);
        assert_eq!(v.len(), 100);
        assert!(v.starts_with(&k));
        assert_eq!(value_of(&k, 4), b"k000".to_vec());
    }
}
