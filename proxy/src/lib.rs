//! weft-proxy: the data plane.
//!
//! - [`iptables`]: the pod's interception rules (`weft-init`): a plan as data,
//!   rendered for `iptables-nft-restore`, installed and verified.

pub mod iptables;
