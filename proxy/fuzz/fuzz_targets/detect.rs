//! Protocol detection (`weft_proxy::detect::classify`) on arbitrary first bytes.
//!
//! Beyond "no panic": the decision must not depend on how the bytes were split
//! into reads. `detect` calls `classify` after every read and keeps the first
//! answer, so the answer for the shortest decided prefix must be the answer for
//! every longer buffer too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::classify;

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    // The first prefix that decides (what a byte-at-a-time client gets).
    let first = (1..=data.len()).find_map(|n| classify(&data[..n]).map(|p| (n, p)));
    match first {
        Some((n, protocol)) => {
            assert_eq!(
                whole,
                Some(protocol),
                "decided {protocol:?} after {n} bytes but {whole:?} on all {} bytes",
                data.len()
            );
        }
        None => assert_eq!(whole, None),
    }
});
