//! Test support shared by the end-to-end suites of weft.
//!
//! - [`netns`]: pods made of network namespaces on a bridge, for the
//!   transparent-interception tests (`tests/netns_intercept.rs`, root only).

pub mod netns;
