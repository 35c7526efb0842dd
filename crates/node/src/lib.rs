//! The twinsan node daemon: the cluster configuration, the replicated volume driver and the admin socket.

pub mod admin;
pub mod api;
pub mod cluster;
pub mod config;
pub mod console;
pub mod daemon;
pub mod http;
pub mod md;
pub mod metrics;
pub mod process;
pub mod vip;
pub mod volume;
pub mod witness;
