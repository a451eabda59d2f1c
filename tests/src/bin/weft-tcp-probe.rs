//! `weft-tcp-probe ADDR MESSAGE`: an unmodified app for the namespace tests.
//! Connects to ADDR, sends MESSAGE, closes its sending side, prints what the
//! server answers until it closes. Gives up after 5 seconds.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(message)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: weft-tcp-probe ADDR MESSAGE");
    };
    let addr: SocketAddr = addr.parse().context("ADDR must be ip:port")?;
    let timeout = Duration::from_secs(5);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(message.as_bytes())?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).context("read reply")?;
    print!("{reply}");
    Ok(())
}
