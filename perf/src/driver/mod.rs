//! Drivers: one trait, one implementation per kind of target.
//!
//! A [`Driver`] is one logical connection of a run. The runner makes `--connections` of them per
//! thread and calls `get`, `put` and `delete` from up to `--pipeline` tasks at once on each; the
//! driver keeps those requests in flight together on its socket(s). Drivers do not measure,
//! retry or verify: the runner times each call, checks values and counts errors.
//!
//! | target              | driver          | protocol                                        |
//! |---------------------|-----------------|-------------------------------------------------|
//! | `kvs://HOST:PORT`   | [`KvsDriver`]   | kvs frames via the shard-aware client (`kvs.rs`) |
//! | `redis://HOST:PORT` | [`RedisDriver`] | RESP2 GET/SET/DEL on one socket (`redis.rs`)     |
//! | `ping://HOST:PORT`  | [`PingDriver`]  | kvs `Ping` for every operation (`kvs.rs`)        |
//!
//! What this is not: a general Redis client (no arrays, no auth, no reconnect) or a retrying
//! kvs client. A driver whose connection breaks fails every later request at once; the run
//! reports the errors rather than hiding them.
//!
//! Invariants: drivers are `!Send` and live on the executor that connected them; every request
//! is bounded by [`DriverOptions::timeout`]; no request waits forever on a dead connection;
//! nothing panics on bytes from a server.

mod kvs;
mod redis;
mod resp;

use std::fmt;
use std::time::Duration;

pub use kvs::{KvsDriver, PingDriver};
pub use redis::RedisDriver;

/// Upper bound on [`DriverOptions::pipeline`] (the kvs client's own ceiling).
pub const PIPELINE_MAX: usize = kvs_wire::client::INFLIGHT_MAX_PER_CONNECTION_MAX;

/// What to measure, parsed from `--target`: `kvs://HOST:PORT`, `redis://HOST:PORT`, `ping://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Target {
    Kvs(String),
    Redis(String),
    Ping(String),
}

impl Target {
    /// The `HOST:PORT` part.
    pub fn addr(&self) -> &str {
        match self {
            Target::Kvs(a) | Target::Redis(a) | Target::Ping(a) => a,
        }
    }

    /// The scheme: `kvs`, `redis` or `ping`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Target::Kvs(_) => "kvs",
            Target::Redis(_) => "redis",
            Target::Ping(_) => "ping",
        }
    }
}

/// The form it was parsed from, `scheme://HOST:PORT`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.addr())
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    /// Accepts `kvs://HOST:PORT`, `redis://HOST:PORT` and `ping://HOST:PORT`, where HOST is a
    /// name, an IPv4 address or a bracketed IPv6 address and PORT is 1 to 65535. Nothing may
    /// follow the port (no path, no credentials).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "expected kvs://HOST:PORT, redis://HOST:PORT or ping://HOST:PORT";
        let Some((scheme, addr)) = s.split_once("://") else {
            return Err(format!("target {s:?}: no scheme; {usage}"));
        };
        let make: fn(String) -> Target = match scheme {
            "kvs" => Target::Kvs,
            "redis" => Target::Redis,
            "ping" => Target::Ping,
            other => return Err(format!("target {s:?}: unknown scheme {other:?}; {usage}")),
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!("target {s:?}: no port; {usage}"));
        };
        let host_ok = if let Some(inner) = host.strip_prefix('[') {
            inner.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        };
        if !host_ok {
            return Err(format!("target {s:?}: bad host {host:?}; {usage}"));
        }
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(format!("target {s:?}: bad port {port:?} (1 to 65535); {usage}")),
        }
        Ok(make(addr.to_string()))
    }
}

/// Settings of every connection of a run.
#[derive(Clone, Debug)]
pub struct DriverOptions {
    /// Per-request timeout, from asking for a pipeline slot to the answer. Above zero. For the
    /// Redis driver a timeout also breaks the connection (see `redis.rs`).
    pub timeout: Duration,
    /// Requests in flight on this connection (the runner never exceeds it); 1 to
    /// [`PIPELINE_MAX`]. Drivers enforce it too: more requests wait for a slot.
    pub pipeline: usize,
    /// `--consistency` as given (one, quorum, all or a number), if any: kvs passes it with
    /// every request, Redis accepts only `one`, `ping` ignores it.
    pub consistency: Option<String>,
}

impl DriverOptions {
    /// Checks every field against its bounds; `connect` does.
    pub fn validate(&self) -> Result<(), DriverError> {
        if self.timeout.is_zero() {
            return Err(DriverError::Unsupported("timeout must be above zero".into()));
        }
        if !(1..=PIPELINE_MAX).contains(&self.pipeline) {
            return Err(DriverError::Unsupported(format!(
                "pipeline {} is outside 1..={PIPELINE_MAX}",
                self.pipeline
            )));
        }
        Ok(())
    }
}

/// Why an operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// This request got no answer within [`DriverOptions::timeout`].
    #[error("timeout")]
    Timeout,
    /// Connecting, writing or reading failed, or the connection is closed or broken.
    #[error("i/o: {0}")]
    Io(String),
    /// The server answered with an error (kvs error frame, Redis `-ERR ...`).
    #[error("server error: {0}")]
    Server(String),
    /// The server sent bytes that are not a valid answer.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The target or an option cannot be served by this driver (wrong scheme, a consistency
    /// level without replication, options out of bounds).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// One logical connection to a target. `&self` methods may be called by many tasks at once on
/// one executor (pipelining); a driver is not `Send`.
#[expect(
    async_fn_in_trait,
    reason = "drivers are used by generic code on one executor, never as dyn or across threads"
)]
pub trait Driver: Sized + 'static {
    /// Opens the connection; `Unsupported` when `target` is not this driver's scheme or an
    /// option cannot be honoured.
    async fn connect(target: &Target, opts: &DriverOptions) -> Result<Self, DriverError>;
    /// The value of `key`, or `None` when it has none.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DriverError>;
    /// Stores `value` under `key`; `Ok` once the server acknowledged it.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), DriverError>;
    /// Removes `key`; removing a missing key is not an error.
    async fn delete(&self, key: &[u8]) -> Result<(), DriverError>;
    /// Fails anything still pending and closes the connection; later calls fail with `Io`.
    async fn close(&self);
}

#[cfg(test)]
mod tests {
    //! Goal: `--target` parsing accepts the three schemes and explains every refusal.
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!("kvs://127.0.0.1:7000".parse(), Ok(Target::Kvs("127.0.0.1:7000".into())));
        assert_eq!("redis://localhost:6379".parse(), Ok(Target::Redis("localhost:6379".into())));
        assert_eq!("ping://[::1]:7000".parse(), Ok(Target::Ping("[::1]:7000".into())));
        let t: Target = "redis://10.0.0.1:1".parse().unwrap();
        assert_eq!(t.to_string(), "redis://10.0.0.1:1");
        assert_eq!(t.addr(), "10.0.0.1:1");
    }

    #[test]
    fn refuses_bad_targets() {
        for (bad, why) in [
            ("127.0.0.1:7000", "no scheme"),
            ("http://h:1", "unknown scheme"),
            ("kvs://h", "no port"),
            ("kvs://:7000", "bad host"),
            ("kvs://h:0", "bad port"),
            ("kvs://h:65536", "bad port"),
            ("kvs://h:+1", "bad port"),
            ("kvs://h:1/path", "bad port"),
            ("redis://user@h:1", "bad host"),
            ("ping://[::1:7000", "bad host"),
            ("ping://::1:7000", "bad host"),
            ("", "no scheme"),
        ] {
            let e = bad.parse::<Target>().expect_err(bad);
            assert!(e.contains(why) && e.contains("kvs://HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn validates_options() {
        let ok = DriverOptions { timeout: Duration::from_secs(1), pipeline: 1, consistency: None };
        assert!(ok.validate().is_ok());
        assert!(DriverOptions { pipeline: 0, ..ok.clone() }.validate().is_err());
        assert!(DriverOptions { pipeline: PIPELINE_MAX + 1, ..ok.clone() }.validate().is_err());
        assert!(DriverOptions { timeout: Duration::ZERO, ..ok }.validate().is_err());
    }
}
