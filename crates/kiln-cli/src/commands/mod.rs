//! One module per subcommand.

pub mod artifact;
pub mod build;
pub mod components;
pub mod declared;
pub mod diff;
pub mod explain;
pub mod export;
pub mod graph;
pub mod logs;
pub mod new;
pub mod push;
pub mod remote;
pub mod remote_run;
pub mod replay;
pub mod report;
pub mod run;
pub mod runs;
pub mod schema;
pub mod serve;
pub mod show;
pub mod state;
pub mod step;
pub mod validate;
