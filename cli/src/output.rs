//! Output formats shared by the commands: tables for people, JSON for machines.

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// For people: a table (redrawn in place, with colours, on a terminal).
    #[default]
    Table,
    /// For machines: JSON (one object per line for live output).
    Json,
}
