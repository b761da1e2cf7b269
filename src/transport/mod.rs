//! The glommio side of the cluster: tasks and stores that carry out what the pure state
//! machines in [`crate::cluster`] decide, on the cluster core.
//!
//! # Parts
//! - [`hint_log`]: the durable hint segments of hinted handoff (store, replay, removal).

pub mod hint_log;
