//! haven-sim
