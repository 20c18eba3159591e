//! Reports of a run for people: the scorecard and the check results as text on
//! the terminal.

pub mod quality;
pub mod terminal;
