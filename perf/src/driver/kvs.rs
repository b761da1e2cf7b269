//! [`KvsDriver`] and [`PingDriver`]: kvs through the shard-aware [`Client`].
//!
//! One driver is one `Client`: the "connection" the runner counts. The client itself keeps one
//! TCP connection per shard port and pipelines every request on it, so `DriverOptions::pipeline`
//! becomes the client's `inflight_max_per_connection`.
//!
//! Settings chosen for measurement: the client's retries are off (`retries: 0`), so a timeout,
//! a broken connection or `Overloaded` is counted as an error by the runner instead of being
//! hidden inside a slower request; the Redis driver does not retry either. Each request is
//! bounded by `DriverOptions::timeout`.
//!
//! Consistency: a kvs node has no replication yet, so every request is answered by one replica.
//! `--consistency one` (or none) is accepted; anything else is `Unsupported`. When replication
//! lands (the cluster issue), `DriverOptions::consistency` becomes a per-request consistency
//! level passed with each get, put and delete.

use kvs_wire::client::{Client, ClientError, ClientOptions};

use super::{Driver, DriverError, DriverOptions, Target};

/// kvs through the shard-aware client.
pub struct KvsDriver {
    client: Client,
}

/// kvs's no-op Ping for every operation (no storage): the server's network ceiling.
///
/// `get`, `put` and `delete` all send one `Ping` and `get` answers `Ok(None)`: nothing is
/// stored, so value verification must be off for ping runs (the runner enforces it).
pub struct PingDriver {
    client: Client,
}

impl From<ClientError> for DriverError {
    fn from(e: ClientError) -> DriverError {
        match e {
            ClientError::Timeout { .. } => DriverError::Timeout,
            ClientError::Server { .. } => DriverError::Server(e.to_string()),
            ClientError::Io { .. } | ClientError::NoNodes => DriverError::Io(e.to_string()),
            ClientError::Protocol(m) => DriverError::Protocol(m),
            ClientError::InvalidOptions(_) | ClientError::TooLarge { .. } => {
                DriverError::Unsupported(e.to_string())
            }
            // ClientError is non-exhaustive; a new kind is reported as it reads.
            other => DriverError::Io(other.to_string()),
        }
    }
}

/// Connects a client to `addr` with the run's settings.
async fn connect_client(addr: &str, opts: &DriverOptions) -> Result<Client, DriverError> {
    opts.validate()?;
    let client_opts = ClientOptions {
        request_timeout: opts.timeout,
        connect_timeout: opts.timeout,
        retries: 0,
        inflight_max_per_connection: opts.pipeline,
        ..ClientOptions::default()
    };
    Ok(Client::connect(addr, client_opts).await?)
}

impl Driver for KvsDriver {
    /// Connects to a `kvs://` target and fetches its topology.
    async fn connect(target: &Target, opts: &DriverOptions) -> Result<Self, DriverError> {
        let Target::Kvs(addr) = target else {
            return Err(DriverError::Unsupported(format!(
                "the kvs driver needs a kvs:// target, not {target}"
            )));
        };
        if let Some(c) = opts.consistency.as_deref() {
            if c != "one" {
                return Err(DriverError::Unsupported(format!(
                    "--consistency {c}: kvs has no replication yet, so only `one` is possible \
                     (per-request consistency comes with the cluster issue)"
                )));
            }
        }
        Ok(KvsDriver { client: connect_client(addr, opts).await? })
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DriverError> {
        Ok(self.client.get(key).await?.map(|(value, _stamp)| value))
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), DriverError> {
        self.client.put(key, value).await?;
        Ok(())
    }

    async fn delete(&self, key: &[u8]) -> Result<(), DriverError> {
        self.client.delete(key).await?;
        Ok(())
    }

    async fn close(&self) {
        self.client.close().await;
    }
}

impl Driver for PingDriver {
    /// Connects to a `ping://` target (a kvs node). `consistency` is ignored: ping touches no
    /// replica.
    async fn connect(target: &Target, opts: &DriverOptions) -> Result<Self, DriverError> {
        let Target::Ping(addr) = target else {
            return Err(DriverError::Unsupported(format!(
                "the ping driver needs a ping:// target, not {target}"
            )));
        };
        Ok(PingDriver { client: connect_client(addr, opts).await? })
    }

    /// Sends a ping; always `Ok(None)`.
    async fn get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, DriverError> {
        self.client.ping().await?;
        Ok(None)
    }

    /// Sends a ping; stores nothing.
    async fn put(&self, _key: &[u8], _value: &[u8]) -> Result<(), DriverError> {
        Ok(self.client.ping().await?)
    }

    /// Sends a ping; deletes nothing.
    async fn delete(&self, _key: &[u8]) -> Result<(), DriverError> {
        Ok(self.client.ping().await?)
    }

    async fn close(&self) {
        self.client.close().await;
    }
}
