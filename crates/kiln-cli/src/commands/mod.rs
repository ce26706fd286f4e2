//! One module per subcommand.

pub mod graph;
pub mod schema;
pub mod validate;
