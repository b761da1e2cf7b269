//! Where a task's operations come from.
//!
//! The runner does not know the workloads: it asks an [`OpSource`] for the next operation, for
//! the bytes of keys and values, and whether a value it read is right. [`Generator`] is the
//! source of real runs; tests use a small one of their own, so the runner can be tested apart
//! from the workload code.

use crate::workload::{verify_value, Generator, Op};

/// A per-task stream of operations (one per task, never shared, seeded per task).
pub trait OpSource: 'static {
    /// The next operation, or `None` when this source has no more (the load phase is done).
    fn next_op(&mut self) -> Option<Op>;
    /// The bytes of key `key_index`.
    fn key(&self, key_index: u64) -> Vec<u8>;
    /// A fresh value to write under `key`.
    fn value(&mut self, key: &[u8]) -> Vec<u8>;
    /// Whether a read of `key_index` that finds nothing is a verification error.
    fn must_exist(&self, key_index: u64) -> bool;
    /// Checks a value read under `key`; the error says why it is wrong.
    fn verify(&self, key: &[u8], value: &[u8]) -> Result<(), String>;
}

impl OpSource for Generator {
    fn next_op(&mut self) -> Option<Op> {
        Generator::next_op(self)
    }

    fn key(&self, key_index: u64) -> Vec<u8> {
        Generator::key(self, key_index)
    }

    fn value(&mut self, key: &[u8]) -> Vec<u8> {
        Generator::value(self, key)
    }

    fn must_exist(&self, key_index: u64) -> bool {
        Generator::must_exist(self, key_index)
    }

    fn verify(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        verify_value(key, value).map_err(|e| e.to_string())
    }
}
