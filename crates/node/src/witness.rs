//! The witness client driver (placeholder: being written).
