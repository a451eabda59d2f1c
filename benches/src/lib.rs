//! The benchmark harness of weft: weft against a direct call and real peers
//! (HAProxy in HTTP and TCP mode, nginx), side by side, in one run.
//!
//! - [`config`]: the command line (`all`, and the worker subcommands).
//! - [`run`]: the `all` command: every system through every scenario.
//! - [`pki`]: the run's root, intermediate and SPIFFE leaves, as PEM files.
//! - [`systems`]: starting and stopping each system on 127.0.0.1.
//! - [`workers`]: the separate processes the harness starts (backend, load,
//!   idle connections, handshakes) so that their CPU is never the proxies'.
//! - [`backend`]: the fixed tiny HTTP/1.1 + h2c server every system forwards to.
//! - [`client`], [`load`]: the load generator (open loop with coordinated
//!   omission corrected, and closed loop), HDR histograms.
//! - [`idle`], [`handshake`]: the idle-connection and mTLS handshake tests.
//! - [`certify`]: certificates signed per second through the controller.
//! - [`webhook`]: webhook latency at 500 admissions per second over HTTPS.
//! - [`procs`]: CPU time and memory of the proxies, from `/proc`.
//! - [`interrupt`]: stops every process the harness started when it is
//!   interrupted (SIGTERM, SIGINT, SIGHUP).
//! - [`scenario`], [`figures`], [`report`]: what runs, what it measured, and
//!   the Markdown, JSON and PNG outputs.

pub mod backend;
pub mod canary;
pub mod certify;
pub mod client;
pub mod config;
pub mod figures;
pub mod handshake;
pub mod idle;
pub mod interrupt;
pub mod load;
pub mod pki;
pub mod procs;
pub mod propagation;
pub mod report;
pub mod run;
pub mod scenario;
pub mod systems;
pub mod webhook;
pub mod workers;
