//! The tables of `weft audit`: one shape ([`Table`]: a header, rows each with a
//! [`Tone`]) written as aligned text (coloured on a terminal) here, and as
//! HTML by [`super::html`].

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// How a row reads: fine, worth a look, or a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tone {
    Plain,
    Good,
    Warn,
    Bad,
}

/// One table of a report.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<(Tone, Vec<String>)>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, tone: Tone, cells: Vec<String>) {
        self.rows.push((tone, cells));
    }
}

pub const GREEN: &str = "\x1b[32m";
pub const YELLOW: &str = "\x1b[33m";
pub const RED: &str = "\x1b[31m";
pub const DIM: &str = "\x1b[2m";
pub const RESET: &str = "\x1b[0m";

/// Whether stdout gets colours: a terminal, and `NO_COLOR` unset.
pub fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Writes `table` with its columns aligned; with `colour`, the header dim and
/// each row in its tone's colour.
pub fn write_text(out: &mut impl Write, table: &Table, colour: bool) -> std::io::Result<()> {
    let mut widths: Vec<usize> = table.header.iter().map(|h| h.chars().count()).collect();
    for (_, row) in &table.rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let header = line(&mut table.header.iter().copied());
    if colour {
        writeln!(out, "{DIM}{header}{RESET}")?;
    } else {
        writeln!(out, "{header}")?;
    }
    for (tone, row) in &table.rows {
        let text = line(&mut row.iter().map(String::as_str));
        let code = match tone {
            Tone::Plain => None,
            Tone::Good => Some(GREEN),
            Tone::Warn => Some(YELLOW),
            Tone::Bad => Some(RED),
        };
        match code.filter(|_| colour) {
            Some(code) => writeln!(out, "{code}{text}{RESET}")?,
            None => writeln!(out, "{text}")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report

    use super::*;

    #[test]
    fn aligns_and_colours_only_when_asked() {
        let mut table = Table::new(&["A", "LONGER"]);
        table.push(Tone::Good, vec!["wide cell".into(), "x".into()]);
        table.push(Tone::Bad, vec!["y".into(), "z".into()]);
        let mut plain = Vec::new();
        write_text(&mut plain, &table, false).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert_eq!(plain, "A          LONGER\nwide cell  x\ny          z\n");
        let mut coloured = Vec::new();
        write_text(&mut coloured, &table, true).unwrap();
        let coloured = String::from_utf8(coloured).unwrap();
        assert!(
            coloured.contains(&format!("{GREEN}wide cell")),
            "{coloured}"
        );
        assert!(coloured.contains(&format!("{RED}y ")), "{coloured}");
    }
}
