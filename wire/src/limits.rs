//! Bounds of the protocol. Hard limits are constants; the defaults of configurable limits live
//! here so client and server agree on them unless an operator changes the server's.

/// Size of the frame header in bytes.
pub const FRAME_HEADER_BYTES: usize = 24;

/// The largest body any frame may carry. A header that claims more is invalid and the
/// connection is closed: the reader cannot tell where the next frame would start.
pub const FRAME_BODY_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Default bound on a key's length (server flag `--key-bytes-max`).
pub const KEY_BYTES_MAX_DEFAULT: u32 = 4 * 1024;

/// Default bound on a value's length (server flag `--value-bytes-max`).
pub const VALUE_BYTES_MAX_DEFAULT: u32 = 1024 * 1024;

/// Room in a body for everything but the key and the value (rkyv framing, options).
pub const BODY_OVERHEAD_BYTES: u32 = 256;

/// Default bound on one frame's body, derived from the key and value bounds.
pub const FRAME_BODY_BYTES_DEFAULT: u32 =
    KEY_BYTES_MAX_DEFAULT + VALUE_BYTES_MAX_DEFAULT + BODY_OVERHEAD_BYTES;

/// Longest time-to-live a put may ask for (`PutRequest::ttl_ms`): 10 years of 365 days, in
/// milliseconds. A node answers a longer one with `InvalidRequest`; it guards against units
/// mixed up (seconds sent as ms from the wrong side, or a timestamp sent as a TTL) and keeps
/// `now + ttl` far from overflowing.
pub const TTL_MS_MAX: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Bound on an error message's length, so an error frame is always small.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// Bound on the counters of one shard in a stats response (the engine has about 40, plus two
/// per LSM level, plus the node's request counters).
pub const STATS_COUNTERS_PER_SHARD_MAX: usize = 512;

/// Bound on a counter name's length in a stats response.
pub const STATS_COUNTER_NAME_BYTES_MAX: usize = 64;

/// The largest stats response a node can send: every shard with every counter at its longest,
/// with room for rkyv's framing (a relative pointer and a length per string and vector).
pub const STATS_RESPONSE_BYTES_MAX: u64 = crate::placement::SHARDS_MAX as u64
    * (STATS_COUNTERS_PER_SHARD_MAX as u64 * (STATS_COUNTER_NAME_BYTES_MAX as u64 + 24) + 64)
    + 64;

const _: () = assert!(STATS_RESPONSE_BYTES_MAX <= FRAME_BODY_BYTES_MAX as u64);
const _: () = assert!(FRAME_BODY_BYTES_DEFAULT <= FRAME_BODY_BYTES_MAX);
const _: () = assert!(KEY_BYTES_MAX_DEFAULT < VALUE_BYTES_MAX_DEFAULT);
