//! weft-controller: the mesh CA and the gRPC API the proxies use.
//!
//! - [`ca`]: trust anchors -> issuer -> leaf; CSR checks, signing, issuer files
//!   (loaded, reloaded on change, generated in local mode).
//! - [`token`]: the [`token::TokenVerifier`] trait, what a token proves; its
//!   backends [`bootstrap`] (local mode's bootstrap tokens) and
//!   [`token_review`] (Kubernetes TokenReview).
//! - [`grpc`]: the `weft.v1.Identity` service, served by tonic over tokio-rustls.
//! - [`discovery`]: the discovery index ([`discovery::SharedIndex`]) the
//!   backends feed and `Discovery.Watch` reads.
//! - [`audit`]: the hash-chained issuance audit trail (JSON lines) and its verifier.
//! - [`metrics`]: issued, refused by reason, issuer expiry.
//! - [`controller`]: starts all of it ([`Controller::start`]); `admin` serves
//!   `/live`, `/ready`, `/metrics`.
//! - [`config`]: the binary's flags, checked all at once.

mod admin;
pub mod audit;
pub mod bootstrap;
pub mod ca;
pub mod config;
pub mod controller;
pub mod discovery;
pub mod grpc;
pub mod metrics;
pub mod token;
pub mod token_review;

pub use controller::{AuditEcho, Controller, Discovery, Settings, StartError};
