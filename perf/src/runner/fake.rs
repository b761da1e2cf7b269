//! A fake target for the runner's tests: an in-memory map with a fixed latency per request, an
//! optional stall (nothing completes for a while, like a server's GC pause or a disk hiccup),
//! injected failures, and counters of how many requests were in flight at once.
//!
//! Backends are registered under a name; `FakeDriver::connect` finds its backend by the
//! target's address (`Target::Kvs("name")`), so every thread's connections share one backend.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::driver::{Driver, DriverError, DriverOptions, Target};

/// The shared state of one fake server.
#[derive(Debug, Default)]
pub struct FakeBackend {
    pub map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Time each request takes.
    pub latency: Duration,
    /// `(start, length)` after the first request: no request in flight during the window
    /// completes before its end.
    pub stall: Option<(Duration, Duration)>,
    /// Every n-th request fails with a server error (0: never).
    pub fail_every: u64,
    pub first_request: OnceLock<Instant>,
    pub in_flight: AtomicUsize,
    /// Most requests in flight at once, all connections.
    pub max_in_flight: AtomicUsize,
    /// Most requests in flight at once on one connection.
    pub max_in_flight_per_connection: AtomicUsize,
    /// Requests served.
    pub requests: AtomicU64,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<FakeBackend>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<FakeBackend>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers `backend` under `name`; the target to use is `Target::Kvs(name)`.
pub fn register(name: &str, backend: FakeBackend) -> Arc<FakeBackend> {
    let backend = Arc::new(backend);
    registry().lock().unwrap().insert(name.to_string(), backend.clone());
    backend
}

/// One connection to a fake backend.
pub struct FakeDriver {
    backend: Arc<FakeBackend>,
    in_flight: Cell<usize>,
}

impl FakeDriver {
    async fn request<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>) -> T,
    ) -> Result<T, DriverError> {
        let b = &self.backend;
        let mine = self.in_flight.get() + 1;
        self.in_flight.set(mine);
        b.max_in_flight_per_connection.fetch_max(mine, Ordering::SeqCst);
        let all = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        b.max_in_flight.fetch_max(all, Ordering::SeqCst);
        let n = b.requests.fetch_add(1, Ordering::SeqCst) + 1;

        let start = Instant::now();
        let first = *b.first_request.get_or_init(|| start);
        let mut finish = start + b.latency;
        if let Some((at, len)) = b.stall {
            let (s0, s1) = (first + at, first + at + len);
            if start < s1 && finish >= s0 {
                finish = finish.max(s1);
            }
        }
        let wait = finish.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            futures_lite::future::yield_now().await;
        } else {
            glommio::timer::sleep(wait).await;
        }

        b.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.in_flight.set(self.in_flight.get() - 1);
        if b.fail_every > 0 && n.is_multiple_of(b.fail_every) {
            return Err(DriverError::Server(format!("injected failure of request {n}")));
        }
        Ok(f(&mut b.map.lock().unwrap()))
    }
}

impl Driver for FakeDriver {
    async fn connect(target: &Target, _opts: &DriverOptions) -> Result<Self, DriverError> {
        let backend = registry().lock().unwrap().get(target.addr()).cloned();
        match backend {
            Some(backend) => Ok(FakeDriver { backend, in_flight: Cell::new(0) }),
            None => Err(DriverError::Io(format!("no fake backend {}", target.addr()))),
        }
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DriverError> {
        self.request(|m| m.get(key).cloned()).await
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), DriverError> {
        self.request(|m| {
            m.insert(key.to_vec(), value.to_vec());
        })
        .await
    }

    async fn delete(&self, key: &[u8]) -> Result<(), DriverError> {
        self.request(|m| {
            m.remove(key);
        })
        .await
    }

    async fn close(&self) {}
}
