//! The market's task kinds: trades from exchanges, the lake, the warehouse, the star-schema
//! transform and the NATS bus. The core's own kinds know nothing of them.

mod exchange_trades;
mod lake_compact;
mod lake_retention;
mod nats_consume;
mod trades_extract;
mod trades_star_schema;
mod warehouse_load_parquet;
mod warehouse_load_star_schema;

use std::sync::Arc;

use crate::tasks::{Registry, TaskError, Transient};

pub use exchange_trades::ExchangeTrades;
pub use lake_compact::LakeCompact;
pub use lake_retention::LakeRetention;
pub use nats_consume::NatsConsume;
pub use trades_extract::TradesExtract;
pub use trades_star_schema::TradesStarSchema;
pub use warehouse_load_parquet::WarehouseLoadParquet;
pub use warehouse_load_star_schema::WarehouseLoadStarSchema;

/// Adds the market's kinds to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(Arc::new(ExchangeTrades::Binance));
    registry.register(Arc::new(ExchangeTrades::MercadoBitcoin));
    registry.register(Arc::new(WarehouseLoadParquet));
    registry.register(Arc::new(TradesExtract));
    registry.register(Arc::new(TradesStarSchema));
    registry.register(Arc::new(WarehouseLoadStarSchema));
    registry.register(Arc::new(LakeCompact));
    registry.register(Arc::new(LakeRetention));
    registry.register(Arc::new(NatsConsume));
}

/// A Polars error as a task's: reading a file (which a concurrent rewrite may have removed)
/// may work on a retry; a query that fails on the data will not.
fn polars_error(error: polars::prelude::PolarsError) -> TaskError {
    match error {
        polars::prelude::PolarsError::IO { .. } => TaskError::transient(error.to_string()),
        other => TaskError::permanent(other.to_string()),
    }
}

/// The market's errors know whether a retry can help; a task's error says it on.
macro_rules! transient_errors {
    ($($error:ty),+) => {
        $(impl Transient for $error {
            fn is_transient(&self) -> bool {
                <$error>::is_transient(self)
            }
        })+
    };
}

transient_errors!(
    crate::trade_bus::BusError,
    crate::exchange::binance::BinanceError,
    crate::exchange::mercado_bitcoin::MercadoBitcoinError,
    crate::lake::LakeError,
    crate::warehouse::WarehouseError,
    crate::staging::StagingError
);

impl Transient for crate::exchange::ExchangeError {
    fn is_transient(&self) -> bool {
        self.retryable
    }
}
