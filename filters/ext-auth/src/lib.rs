//! External authorization filter (being built).
