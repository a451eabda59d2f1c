//! The wire types of the control protocol, generated from `proto/` and checked
//! in (see `tests/proto_generated.rs`). Code outside `weft-api` should use the
//! domain types that [`crate::certify`] converts them into.

/// Package `weft.v1`.
#[allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    missing_docs,
    rustdoc::invalid_html_tags
)]
pub mod weft_v1 {
    include!("proto/weft.v1.rs");
}
