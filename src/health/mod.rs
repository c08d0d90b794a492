//! Health: active probes, passive failure detection, and the state changes they drive.

pub mod checker;
pub mod passive;
