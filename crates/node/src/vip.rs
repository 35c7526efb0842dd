//! The virtual IP agent (placeholder: being written).
