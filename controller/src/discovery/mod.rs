//! Discovery: what the controller tells proxies about their targets.
//!
//! - `service`: the `weft.v1.Discovery` gRPC service.
//! - `local`: local mode's policy directory.

pub mod service;
