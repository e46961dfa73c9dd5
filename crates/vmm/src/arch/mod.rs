//! Architecture specifics. Only x86_64 for now.

pub mod x86_64;
