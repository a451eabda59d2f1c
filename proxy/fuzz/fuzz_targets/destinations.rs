//! The `WEFT_PROXY_DESTINATIONS` format (`weft_proxy::destinations::Destinations`).
//!
//! Beyond "no panic": an accepted map, written back as `ADDRESS=IDENTITY`
//! entries (one per line), parses to the same map with the same entries, and
//! every entry is found by `lookup` with its identity.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use weft_proxy::destinations::Destinations;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(map) = Destinations::parse(text) else {
        return;
    };
    let entries = map.entries();
    assert_eq!(entries.len(), map.len());
    let written: String = entries
        .iter()
        .map(|(addr, identity)| format!("{addr}={identity}\n"))
        .collect();
    let again = Destinations::parse(&written)
        .unwrap_or_else(|problems| panic!("{written:?} does not parse again: {problems:?}"));
    assert_eq!(again, map, "{written:?} parses to another map");
    assert_eq!(again.entries(), entries);
    for (addr, identity) in &entries {
        let probe = match addr.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                let ip: IpAddr = addr.parse().expect("entries are IP or IP:PORT");
                SocketAddr::new(ip, 1)
            }
        };
        // A bare IP may be shadowed by an IP:PORT entry on that port; the
        // IP:PORT entries themselves always win.
        if addr.parse::<SocketAddr>().is_ok() {
            assert_eq!(map.lookup(probe), Some(*identity));
        } else {
            assert!(map.lookup(probe).is_some());
        }
    }
});
