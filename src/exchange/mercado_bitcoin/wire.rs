//! The JSON shapes of Mercado Bitcoin's public REST API v4, shared by the client and the
//! simulator.

use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;
use crate::exchange::Trade;

/// An element of `GET /api/v4/{symbol}/trades`: `{"tid": 2, "date": 1629989121, "type":
/// "sell", "price": "15000", "amount": "1"}`, and the `data` of a websocket `trade` frame.
/// Prices and amounts are read from strings or numbers (the websocket's types are not
/// documented; a number is read by its shortest exact text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireTrade {
    /// Per market, increasing.
    pub tid: i64,
    /// Seconds since the Unix epoch: many trades share one.
    pub date: i64,
    /// The taker's side: `buy` or `sell`.
    #[serde(rename = "type")]
    pub side: String,
    #[serde(deserialize_with = "crate::decimal::from_string_or_number")]
    pub price: Decimal,
    #[serde(deserialize_with = "crate::decimal::from_string_or_number")]
    pub amount: Decimal,
}

impl WireTrade {
    /// The trade, in orch's record: the time in milliseconds (of the second MB gives), and
    /// the buyer the maker when the taker sold. `None` for an unknown side, a `tid` that is
    /// no usable id, or a price × amount out of range.
    pub fn trade(&self) -> Option<Trade> {
        let is_buyer_maker = match self.side.as_str() {
            "sell" => true,
            "buy" => false,
            _ => return None,
        };
        Trade::new(
            crate::exchange::usable_id(self.tid)?,
            self.price,
            self.amount,
            self.date.checked_mul(1000)?,
            is_buyer_maker,
            true,
        )
    }
}

impl From<&Trade> for WireTrade {
    fn from(t: &Trade) -> WireTrade {
        WireTrade {
            tid: t.id,
            date: t.time_ms.div_euclid(1000),
            side: if t.is_buyer_maker { "sell" } else { "buy" }.to_string(),
            price: t.price,
            amount: t.qty,
        }
    }
}

/// Every error answer: `{"code": "PUBLIC_DATA|GET_TRADES|INVALID_BASE_QUOTE", "message": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// `GET /api/v4/symbols`: one object of parallel arrays, not an array of rows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Symbols {
    pub symbol: Vec<String>,
    #[serde(rename = "base-currency")]
    pub base_currency: Vec<String>,
    /// The quote currency.
    pub currency: Vec<String>,
    #[serde(rename = "exchange-traded")]
    pub exchange_traded: Vec<bool>,
}

/// The websocket's name of a market: `BTC-BRL` is `BRLBTC`, quote then base.
pub fn ws_name(symbol: &str) -> Option<String> {
    let (base, quote) = symbol.split_once('-')?;
    Some(format!("{quote}{base}"))
}
