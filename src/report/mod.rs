//! Reports of a run for people: the scorecard as text on the terminal.

pub mod terminal;
