//! weft-proxy: the data plane.
//!
//! - [`destinations`]: the static map of meshed destinations (address ->
//!   expected identity) for the transparent outbound listener.
//! - [`iptables`]: the pod's interception rules (`weft-init`): a plan as data,
//!   rendered for `iptables-nft-restore`, installed and verified.
//! - [`sockopt`]: the original destination of a redirected connection
//!   (`SO_ORIGINAL_DST`); the only module that may hold `unsafe` (it has none).

pub mod destinations;
pub mod iptables;
pub mod sockopt;
