//! The JSON shapes of KuCoin's public spot API, shared by the client and the simulator.

use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;
use crate::exchange::Trade;

/// The code of every successful answer.
pub const OK: &str = "200000";

/// Every REST answer: `{"code": "200000", "data": ...}`; a failure carries another code and a
/// `msg`, even at HTTP 200.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub code: String,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
}

/// An element of `GET /api/v1/market/histories`: `time` a JSON number in nanoseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryTrade {
    /// Per symbol, increasing, not consecutive (order-book events share it); a numeric
    /// string.
    pub sequence: String,
    pub price: Decimal,
    pub size: Decimal,
    /// The taker's side: `buy` or `sell`.
    pub side: String,
    pub time: i64,
}

/// The `data` of a `/market/match` message: every field a string, `time` in nanoseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchData {
    pub symbol: String,
    pub sequence: String,
    pub price: Decimal,
    pub size: Decimal,
    pub side: String,
    pub time: String,
    /// Opaque: its format changed over the years; orch keys trades on `sequence`.
    pub trade_id: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// One element of `GET /api/v2/symbols`, the fields orch reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSymbol {
    /// The stable code, `BTC-USDT`; `name` follows renames.
    pub symbol: String,
    pub name: String,
    pub base_currency: String,
    pub quote_currency: String,
    pub enable_trading: bool,
    /// The price step, as text: some pairs step finer than orch's 8 digits.
    pub price_increment: String,
    /// The size step, as text.
    pub base_increment: String,
}

/// `POST /api/v1/bullet-public`'s `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bullet {
    pub token: String,
    pub instance_servers: Vec<InstanceServer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceServer {
    pub endpoint: String,
    pub encrypt: bool,
    pub protocol: String,
    /// Milliseconds between the client's pings.
    pub ping_interval: u64,
    /// Milliseconds a pong may take before the link counts as dead.
    pub ping_timeout: u64,
}

/// A trade in orch's record from KuCoin's fields: the id is the sequence, the time in
/// milliseconds (of KuCoin's nanoseconds), the buyer the maker when the taker sold. `None`
/// for an unknown side, a sequence that is no usable id, or a price × size out of range.
pub fn trade(
    sequence: &str,
    price: Decimal,
    size: Decimal,
    side: &str,
    time_ns: i64,
) -> Option<Trade> {
    let is_buyer_maker = match side {
        "sell" => true,
        "buy" => false,
        _ => return None,
    };
    Trade::new(
        crate::exchange::usable_id(sequence.parse().ok()?)?,
        price,
        size,
        time_ns.div_euclid(1_000_000),
        is_buyer_maker,
        true,
    )
}

impl HistoryTrade {
    pub fn trade(&self) -> Option<Trade> {
        trade(&self.sequence, self.price, self.size, &self.side, self.time)
    }
}

impl MatchData {
    pub fn trade(&self) -> Option<Trade> {
        trade(
            &self.sequence,
            self.price,
            self.size,
            &self.side,
            self.time.parse().ok()?,
        )
    }
}

/// The taker's side of a trade, as KuCoin words it.
pub fn side_of(trade: &Trade) -> &'static str {
    if trade.is_buyer_maker { "sell" } else { "buy" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_examples_parse_with_exact_values() {
        let rest = r#"{"code":"200000","data":[{"sequence":"10976028003549185","price":"67122","size":"0.000025","side":"buy","time":1729177117877000000}]}"#;
        let page: Envelope<Vec<HistoryTrade>> = serde_json::from_str(rest).expect("histories");
        let trade = page.data.expect("data")[0].trade().expect("a trade");
        assert_eq!(trade.id, 10976028003549185);
        assert_eq!(trade.time_ms, 1729177117877);
        assert_eq!(trade.quote_qty.to_string(), "1.6780500000000000");
        assert!(!trade.is_buyer_maker, "the taker bought");
        let live = r#"{"makerOrderId":"671b5007389355000701b1d3","price":"67523","sequence":"11067996711960577","side":"sell","size":"0.003","symbol":"BTC-USDT","takerOrderId":"671b50161777ff00074c168d","time":"1729843222921000000","tradeId":"11067996711960577","type":"match"}"#;
        let data: MatchData = serde_json::from_str(live).expect("match");
        let trade = data.trade().expect("a trade");
        assert_eq!(
            (trade.id, trade.time_ms),
            (11067996711960577, 1729843222921)
        );
        assert!(trade.is_buyer_maker, "the taker sold");
        let failed: Envelope<Vec<HistoryTrade>> =
            serde_json::from_str(r#"{"code":"900001","msg":"symbol not exists"}"#)
                .expect("failure");
        assert_eq!(
            (failed.code.as_str(), failed.data.is_none()),
            ("900001", true)
        );
    }
}
