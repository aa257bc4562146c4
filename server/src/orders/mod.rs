//! Orders: the command side of Ordo, projected from the order streams in the log.

pub mod commands;
pub mod derive;
pub mod model;
pub mod records;

pub use commands::OrderCommands;
