//! The static map of meshed destinations used by the transparent outbound
//! listener until discovery replaces it: original destination address ->
//! the identity its proxy must prove.
//!
//! The map is written as entries separated by whitespace (or one per line in
//! a file, where `#` starts a comment), each `ADDRESS=IDENTITY`. ADDRESS is an
//! IP address (every port of that pod is meshed) or `IP:PORT` (that port
//! only, which wins over a bare IP), for example:
//!
//! ```text
//! 198.18.0.3=spiffe://cluster.local/ns/shop/sa/checkout
//! [fd00::7]:8080=spiffe://cluster.local/ns/shop/sa/cart
//! ```
//!
//! A destination not in the map is outside the mesh: it is passed through
//! in plain TCP, untouched.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use weft_api::Identity;

/// Meshed destinations by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destinations {
    by_addr: HashMap<SocketAddr, Identity>,
    by_ip: HashMap<IpAddr, Identity>,
}

impl Destinations {
    /// Parses the map; every bad entry is reported, each naming the entry and
    /// what is expected.
    pub fn parse(text: &str) -> Result<Destinations, Vec<String>> {
        let mut map = Destinations::default();
        let problems = map.add(text);
        if problems.is_empty() {
            Ok(map)
        } else {
            Err(problems)
        }
    }

    /// Adds the entries of `text` to the map; returns the problems with bad
    /// entries (an address already in the map is one).
    pub fn add(&mut self, text: &str) -> Vec<String> {
        let entries = text
            .lines()
            .map(|line| line.split_once('#').map_or(line, |(before, _)| before))
            .flat_map(str::split_whitespace);
        entries
            .filter_map(|entry| self.insert(entry).err())
            .collect()
    }

    fn insert(&mut self, entry: &str) -> Result<(), String> {
        let Some((addr, identity)) = entry.split_once('=') else {
            return Err(format!(
                "`{entry}` is not ADDRESS=IDENTITY (e.g. 198.18.0.3=spiffe://cluster.local/ns/default/sa/web)"
            ));
        };
        let identity: Identity = identity
            .parse()
            .map_err(|e| format!("`{entry}`: bad identity: {e}"))?;
        let duplicate = if let Ok(addr) = addr.parse::<SocketAddr>() {
            self.by_addr.insert(addr, identity).is_some()
        } else if let Ok(ip) = addr.parse::<IpAddr>() {
            self.by_ip.insert(ip, identity).is_some()
        } else {
            return Err(format!(
                "`{entry}`: `{addr}` is not an IP address or IP:PORT ([IPv6]:PORT for IPv6)"
            ));
        };
        if duplicate {
            return Err(format!("`{entry}`: {addr} is listed twice"));
        }
        Ok(())
    }

    /// Every entry as `(address, identity)`, addresses as written (`IP` or
    /// `IP:PORT`), sorted.
    pub fn entries(&self) -> Vec<(String, &Identity)> {
        let mut out: Vec<(String, &Identity)> = self
            .by_ip
            .iter()
            .map(|(ip, id)| (ip.to_string(), id))
            .chain(self.by_addr.iter().map(|(addr, id)| (addr.to_string(), id)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The identity expected at `addr`, if it is meshed.
    pub fn lookup(&self, addr: SocketAddr) -> Option<&Identity> {
        self.by_addr
            .get(&addr)
            .or_else(|| self.by_ip.get(&addr.ip()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.by_addr.len() + self.by_ip.len()
    }

    /// Whether the map is empty (every destination is passed through).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

    #[test]
    fn port_entries_win_over_ip_entries() {
        let text = format!(
            "198.18.0.3={WEB}  # the web pod\n198.18.0.3:5432={DB}\n[fd00::7]:80={WEB} fd00::8={DB}\n"
        );
        let map = Destinations::parse(&text).unwrap();
        assert_eq!(map.len(), 4);
        let at = |s: &str| map.lookup(s.parse().unwrap()).map(ToString::to_string);
        assert_eq!(at("198.18.0.3:8080").as_deref(), Some(WEB));
        assert_eq!(at("198.18.0.3:5432").as_deref(), Some(DB));
        assert_eq!(at("[fd00::7]:80").as_deref(), Some(WEB));
        assert_eq!(at("[fd00::7]:81"), None);
        assert_eq!(at("[fd00::8]:1").as_deref(), Some(DB));
        assert_eq!(at("198.18.0.4:8080"), None);
    }

    #[test]
    fn empty_text_is_an_empty_map() {
        let map = Destinations::parse("  \n# nothing\n").unwrap();
        assert!(map.is_empty());
    }

    #[test]
    fn every_bad_entry_is_reported() {
        let text =
            format!("nonsense 198.18.0.3=web 10.0.0.300={WEB} 198.18.0.3={WEB} 198.18.0.3={DB}");
        let problems = Destinations::parse(&text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].contains("is not ADDRESS=IDENTITY"));
        assert!(problems[1].contains("bad identity"));
        assert!(problems[2].contains("not an IP address or IP:PORT"));
        assert!(problems[3].contains("198.18.0.3 is listed twice"));
    }
}
