//! Stable error codes. The numbers are part of the protocol: never renumber, only add.

use std::fmt;

/// Why a request failed. Sent on the wire as a `u16` inside [`crate::msg::ErrorResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed: bad frame, bad body, unknown opcode, empty key.
    InvalidRequest,
    /// A frame, key or value exceeds a configured limit.
    TooLarge,
    /// Too few replicas are alive to serve the request at its consistency.
    Unavailable,
    /// Replicas did not answer in time.
    Timeout,
    /// A conditional write lost against a newer version.
    Conflict,
    /// A bounded queue is full; retry later.
    Overloaded,
    /// A bug or an I/O failure on the server.
    Internal,
}

impl ErrorCode {
    /// All codes, for tests and documentation.
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InvalidRequest,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Conflict,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 1,
            ErrorCode::TooLarge => 2,
            ErrorCode::Unavailable => 3,
            ErrorCode::Timeout => 4,
            ErrorCode::Conflict => 5,
            ErrorCode::Overloaded => 6,
            ErrorCode::Internal => 7,
        }
    }

    /// Decodes a wire number; unknown numbers (from a newer server) read as `Internal`.
    pub fn from_u16(v: u16) -> ErrorCode {
        match v {
            1 => ErrorCode::InvalidRequest,
            2 => ErrorCode::TooLarge,
            3 => ErrorCode::Unavailable,
            4 => ErrorCode::Timeout,
            5 => ErrorCode::Conflict,
            6 => ErrorCode::Overloaded,
            _ => ErrorCode::Internal,
        }
    }

    /// The stable name, as printed by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "InvalidRequest",
            ErrorCode::TooLarge => "TooLarge",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Timeout => "Timeout",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::Overloaded => "Overloaded",
            ErrorCode::Internal => "Internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_stable() {
        let numbers: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.to_u16()).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6, 7]);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.to_u16()), code);
        }
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Internal);
    }
}
