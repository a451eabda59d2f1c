//! Idle connections: opens many HTTP/1.1 keep-alive connections to a system,
//! sends one request on each (so every proxy has set up what a real client
//! would cause), then holds them open while the harness reads memory.
//!
//! Runs as `weft-benches idle`: prints `ready <open> <failed>` on stdout once
//! done, then holds until stdin closes or the time limit passes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::client::{Connection, Protocol};

/// Connections opened at once while building up the idle set.
const OPENING_CONCURRENCY: usize = 64;
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the whole opening phase may take; what is open by then is held.
const OPENING_DEADLINE: Duration = Duration::from_secs(60);

/// Opens `count` connections, answers with the number open and failed, and
/// holds them for at most `hold`.
pub async fn hold(addr: SocketAddr, count: usize, hold: Duration) -> (usize, usize) {
    let mut open = Vec::with_capacity(count);
    let mut failed = 0;
    let mut remaining = count;
    let deadline = tokio::time::Instant::now() + OPENING_DEADLINE;
    while remaining > 0 {
        if tokio::time::Instant::now() > deadline {
            failed += remaining;
            break;
        }
        let batch = remaining.min(OPENING_CONCURRENCY);
        remaining -= batch;
        let mut tasks = Vec::with_capacity(batch);
        for _ in 0..batch {
            tasks.push(tokio::spawn(async move {
                tokio::time::timeout(STEP_TIMEOUT, async move {
                    let mut conn = Connection::open(addr, Protocol::Http1).await.ok()?;
                    conn.get().await.ok()?;
                    Some(conn)
                })
                .await
                .ok()
                .flatten()
            }));
        }
        for task in tasks {
            match task.await.ok().flatten() {
                Some(conn) => open.push(conn),
                None => failed += 1,
            }
        }
    }
    println!("ready {} {failed}", open.len());
    // Hold until the harness closes stdin (or it dies), bounded by `hold`.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(hold, async {
        while let Ok(n) = stdin.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let n = open.len();
    drop(open);
    (n, failed)
}
