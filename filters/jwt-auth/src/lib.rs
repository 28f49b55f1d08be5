//! JWT verification filter (being built; see the crate's README once it lands).
