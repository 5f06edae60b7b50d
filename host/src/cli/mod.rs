//! The `lumen` command's modules: the admin API client, output rendering, the admin
//! subcommands and `lumen up`.

pub mod client;
pub mod commands;
pub mod render;
pub mod up;
