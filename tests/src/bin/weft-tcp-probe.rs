//! `weft-tcp-probe ADDR MESSAGE`: an unmodified app for the namespace tests.
//! Connects to ADDR, sends MESSAGE, closes its sending side, prints what the
//! server answers until it closes.
//!
//! `weft-tcp-probe --server-first ADDR MESSAGE`: a client of a protocol where
//! the server speaks first (like SMTP): waits for the server's first line,
//! prints it, then sends MESSAGE as a line and prints the answer.
//!
//! Gives up after 30 seconds.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let server_first = args.first().is_some_and(|a| a == "--server-first");
    if server_first {
        args.remove(0);
    }
    let [addr, message] = args.as_slice() else {
        anyhow::bail!("usage: weft-tcp-probe [--server-first] ADDR MESSAGE");
    };
    let addr: SocketAddr = addr.parse().context("ADDR must be ip:port")?;
    let timeout = Duration::from_secs(30);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    if server_first {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting).context("read greeting")?;
        print!("{greeting}");
        stream.write_all(format!("{message}\r\n").as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = String::new();
        reader.read_to_string(&mut reply).context("read reply")?;
        print!("{reply}");
    } else {
        stream.write_all(message.as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).context("read reply")?;
        print!("{reply}");
    }
    Ok(())
}
