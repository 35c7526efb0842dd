//! The witness protocol core (placeholder: being written).
