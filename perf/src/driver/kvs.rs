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
//! Consistency: `--consistency one|quorum|all|N` becomes the client's read and write
//! consistency (R for gets, W for puts and deletes; a number is both); none leaves the node's
//! configured default. Anything else is `Unsupported` before the run starts.

use kvs_wire::client::{Client, ClientError, ClientOptions};
use kvs_wire::msg::Consistency;

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

/// `one`, `quorum`, `all` or a count of 1..=255.
fn parse_consistency(c: &str) -> Result<Consistency, DriverError> {
    match c {
        "one" => Ok(Consistency::One),
        "quorum" => Ok(Consistency::Quorum),
        "all" => Ok(Consistency::All),
        n => match n.parse::<u8>() {
            Ok(n) if n > 0 => Ok(Consistency::Count(n)),
            _ => Err(DriverError::Unsupported(format!(
                "--consistency {c}: expected one, quorum, all or a count of 1 to 255"
            ))),
        },
    }
}

/// Connects a client to `addr` with the run's settings.
async fn connect_client(addr: &str, opts: &DriverOptions) -> Result<Client, DriverError> {
    opts.validate()?;
    let consistency = match opts.consistency.as_deref() {
        None => Consistency::Default,
        Some(c) => parse_consistency(c)?,
    };
    let client_opts = ClientOptions {
        read_consistency: consistency,
        write_consistency: consistency,
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
