//! RESP2, the Redis protocol, as far as the Redis driver needs it: command encoding, and a pure
//! incremental parser of the replies GET, SET and DEL produce. It does no I/O.
//!
//! ## Format
//! A command is an array of bulk strings, binary safe:
//! ```text
//! *2\r\n $3\r\n GET\r\n $<n>\r\n <key: n bytes>\r\n          (spaces only for reading)
//! ```
//! A reply starts with a type byte and ends with `\r\n`:
//! ```text
//! +OK\r\n               simple string (no CR or LF inside)
//! -ERR message\r\n      error
//! :1\r\n                integer (signed, decimal)
//! $5\r\nhello\r\n       bulk string of 5 bytes, binary safe
//! $-1\r\n               null bulk string (GET of a missing key)
//! ```
//! Arrays (`*`) and the RESP3 types are never a reply to these commands and are refused.
//!
//! ## Invariants
//! - [`parse`] tells [`ParseError::Incomplete`] (read more, nothing is consumed) from
//!   [`ParseError::Invalid`] (the stream cannot be resynchronised). It never panics and never
//!   indexes out of bounds, whatever the bytes.
//! - Memory is bounded: a line longer than [`LINE_BYTES_MAX`] or a bulk string longer than
//!   [`BULK_BYTES_MAX`] is invalid, so the reader's buffer never needs to grow beyond
//!   [`REPLY_BYTES_MAX`].

use std::io::Write;

/// Longest simple-string, error or integer line accepted, CRLF excluded.
pub const LINE_BYTES_MAX: usize = 64 * 1024;
/// Longest bulk string accepted (the harness's values are far smaller; Redis's own default
/// `proto-max-bulk-len` is 512 MiB).
pub const BULK_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest reply [`parse`] may need in its buffer at once.
pub const REPLY_BYTES_MAX: usize = 1 + LINE_BYTES_MAX + 2 + BULK_BYTES_MAX + 2;

const _: () = assert!(LINE_BYTES_MAX >= 32, "a line must hold any i64 and a short message");
const _: () = assert!(BULK_BYTES_MAX <= i64::MAX as usize);

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Simple(Vec<u8>),
    /// `-...`: the server refused the command.
    Error(Vec<u8>),
    /// `:...`
    Integer(i64),
    /// `$...`; `None` is the null bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
}

/// Why [`parse`] returned no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The buffer holds the start of a reply only: read more bytes and parse again.
    Incomplete,
    /// The bytes are not a valid reply.
    Invalid(String),
}

/// Appends the command made of `args` (for example `[b"SET", key, value]`) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses the reply at the start of `buf`; returns it and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<(Reply, usize), ParseError> {
    let Some(&kind) = buf.first() else {
        return Err(ParseError::Incomplete);
    };
    let (line, after) = line(buf)?;
    match kind {
        b'+' => Ok((Reply::Simple(line.to_vec()), after)),
        b'-' => Ok((Reply::Error(line.to_vec()), after)),
        b':' => Ok((Reply::Integer(integer(line)?), after)),
        b'$' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok((Reply::Bulk(None), after));
            }
            let len = usize::try_from(len)
                .map_err(|_| ParseError::Invalid(format!("negative bulk length {len}")))?;
            if len > BULK_BYTES_MAX {
                return Err(ParseError::Invalid(format!(
                    "bulk length {len} exceeds {BULK_BYTES_MAX} bytes"
                )));
            }
            let end = after + len;
            let Some(tail) = buf.get(end..end + 2) else {
                return Err(ParseError::Incomplete);
            };
            if tail != b"\r\n" {
                return Err(ParseError::Invalid("bulk string not followed by CRLF".into()));
            }
            let data = buf.get(after..end).ok_or(ParseError::Incomplete)?;
            Ok((Reply::Bulk(Some(data.to_vec())), end + 2))
        }
        b'*' => Err(ParseError::Invalid("unexpected array reply".into())),
        other => Err(ParseError::Invalid(format!("unexpected reply type byte 0x{other:02x}"))),
    }
}

/// The line after the type byte, without its CRLF, and the offset just past the CRLF.
fn line(buf: &[u8]) -> Result<(&[u8], usize), ParseError> {
    let body = buf.get(1..).unwrap_or(&[]);
    let scan = body.get(..LINE_BYTES_MAX + 2).unwrap_or(body);
    let Some(cr) = scan.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if body.len() >= LINE_BYTES_MAX + 2 {
            Err(ParseError::Invalid(format!("reply line longer than {LINE_BYTES_MAX} bytes")))
        } else {
            Err(ParseError::Incomplete)
        };
    };
    if cr > LINE_BYTES_MAX {
        return Err(ParseError::Invalid(format!("reply line longer than {LINE_BYTES_MAX} bytes")));
    }
    match body.get(cr..cr + 2) {
        Some(b"\r\n") => Ok((body.get(..cr).unwrap_or(&[]), 1 + cr + 2)),
        Some(_) => Err(ParseError::Invalid("bare CR or LF in a reply line".into())),
        // A lone trailing CR: its LF has not arrived yet.
        None if body.get(cr) == Some(&b'\r') => Err(ParseError::Incomplete),
        None => Err(ParseError::Invalid("bare LF in a reply line".into())),
    }
}

/// A strict decimal i64: optional `-`, then 1 to 19 digits, nothing else.
fn integer(line: &[u8]) -> Result<i64, ParseError> {
    let bad = || ParseError::Invalid(format!("bad integer {:?}", String::from_utf8_lossy(line)));
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(line).ok().and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    //! Goal: the parser returns each reply type whole, says `Incomplete` for every strict
    //! prefix of a valid reply, and refuses malformed bytes without panicking.
    use super::*;

    fn whole(bytes: &[u8]) -> Reply {
        let (r, used) = parse(bytes).expect("valid reply");
        assert_eq!(used, bytes.len());
        r
    }

    #[test]
    fn parses_every_reply_type() {
        assert_eq!(whole(b"+OK\r\n"), Reply::Simple(b"OK".to_vec()));
        assert_eq!(whole(b"-ERR boom\r\n"), Reply::Error(b"ERR boom".to_vec()));
        assert_eq!(whole(b":0\r\n"), Reply::Integer(0));
        assert_eq!(whole(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(whole(b"$5\r\nhe\r\no\r\n"), Reply::Bulk(Some(b"he\r\no".to_vec())));
        assert_eq!(whole(b"$0\r\n\r\n"), Reply::Bulk(Some(Vec::new())));
        assert_eq!(whole(b"$-1\r\n"), Reply::Bulk(None));
    }

    #[test]
    fn every_prefix_is_incomplete_then_the_whole_parses() {
        for reply in [&b"+OK\r\n"[..], b"-ERR x\r\n", b":123\r\n", b"$3\r\nabc\r\n", b"$-1\r\n"] {
            for n in 0..reply.len() {
                assert_eq!(parse(&reply[..n]), Err(ParseError::Incomplete), "{reply:?}[..{n}]");
            }
            whole(reply);
        }
    }

    #[test]
    fn consumes_one_reply_of_many() {
        let buf = b":1\r\n$2\r\nab\r\n+OK\r\n";
        let (r, used) = parse(buf).unwrap();
        assert_eq!((r, used), (Reply::Integer(1), 4));
        let (r, used2) = parse(&buf[used..]).unwrap();
        assert_eq!(r, Reply::Bulk(Some(b"ab".to_vec())));
        assert_eq!(parse(&buf[used + used2..]).unwrap().0, Reply::Simple(b"OK".to_vec()));
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [
            &b"?what\r\n"[..],
            b"*1\r\n$1\r\na\r\n",
            b":\r\n",
            b":+1\r\n",
            b":1x\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$3\r\nabcXY",
            b"+O\nK\r\n",
            b"+OK\rX",
            b"$99999999999\r\n",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Invalid(_))), "{bad:?}");
        }
        let mut long = vec![b'+'; LINE_BYTES_MAX + 4];
        long.push(b'\r');
        assert!(matches!(parse(&long), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn no_panic_on_arbitrary_bytes() {
        // A cheap deterministic sweep (xorshift): every outcome is fine except a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"+-:$*\r\n0123456789-abc";
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if let Ok((_, used)) = parse(&buf) {
                assert!(used <= buf.len());
            }
        }
    }

    #[test]
    fn encodes_binary_safe_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k\r\n", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
    }
}
