//! Transforms of trades into analytical tables, and the checks they must pass.

mod currencies;
pub mod quality;
pub mod star_schema;
