//! weft-proxy: the data plane.
//!
//! - [`iptables`]: the pod's interception rules (`weft-init`): a plan as data,
//!   rendered for `iptables-nft-restore`, installed and verified.
//! - [`sockopt`]: the original destination of a redirected connection
//!   (`SO_ORIGINAL_DST`); the only module that may hold `unsafe` (it has none).

pub mod iptables;
pub mod sockopt;
