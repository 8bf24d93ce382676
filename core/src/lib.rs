//! haven-core
