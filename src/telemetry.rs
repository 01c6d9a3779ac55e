//! Logging and metrics setup.
