//! Emulator (in progress).
