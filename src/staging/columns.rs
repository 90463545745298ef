//! Staged trades column by column, with what the gap checks ask of them: each symbol's span of
//! ids, the gaps inside it, the counts.

use super::StagingError;
use crate::decimal::Decimal;

/// One symbol's trades in a [`TradeColumns`]: how many, and the lowest and highest id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSpan<'a> {
    pub symbol: &'a str,
    pub count: u64,
    pub first: i64,
    pub last: i64,
}

impl IdSpan<'_> {
    /// Ids are consecutive per symbol and unique in staging: the span is whole exactly when it
    /// holds as many trades as ids.
    pub fn is_whole(&self) -> bool {
        i128::from(self.last) - i128::from(self.first) + 1 == i128::from(self.count)
    }
}

/// Staged trades column by column; prices and quantities in units of 10⁻⁸, quote quantities
/// in units of 10⁻¹⁶.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TradeColumns {
    /// The distinct symbols, in order of first appearance; `symbol` indexes into it.
    pub symbols: Vec<String>,
    pub symbol: Vec<u32>,
    pub trade_id: Vec<i64>,
    pub price: Vec<i128>,
    pub qty: Vec<i128>,
    pub quote_qty: Vec<i128>,
    /// Milliseconds since the epoch, UTC.
    pub trade_time: Vec<i64>,
    pub is_buyer_maker: Vec<bool>,
}

impl TradeColumns {
    /// Appends one staged trade. Its quote quantity is computed here by the one exact
    /// multiply, not read back: rows staged before it kept 16 digits held a cut value.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        table: &str,
        symbol: &str,
        trade_id: i64,
        price: Decimal,
        qty: Decimal,
        trade_time: i64,
        is_buyer_maker: bool,
    ) -> Result<(), StagingError> {
        let quote = price.exact_mul(qty).ok_or_else(|| StagingError::Corrupt {
            table: table.to_string(),
            column: "price × qty",
            value: format!("{price} × {qty} (trade {symbol} {trade_id})"),
        })?;
        self.push_symbol(symbol);
        self.trade_id.push(trade_id);
        self.price.push(price.units());
        self.qty.push(qty.units());
        self.quote_qty.push(quote.units());
        self.trade_time.push(trade_time);
        self.is_buyer_maker.push(is_buyer_maker);
        Ok(())
    }
}

impl TradeColumns {
    pub fn len(&self) -> usize {
        self.trade_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trade_id.is_empty()
    }

    fn push_symbol(&mut self, symbol: &str) {
        // A day holds a handful of symbols; the last one seen is nearly always the next.
        let code = match self.symbols.iter().rposition(|s| s == symbol) {
            Some(code) => code,
            None => {
                self.symbols.push(symbol.to_string());
                self.symbols.len() - 1
            }
        };
        self.symbol.push(u32::try_from(code).unwrap_or(u32::MAX));
    }

    /// Per symbol, its trade count and lowest and highest id, in order of first appearance.
    pub fn id_spans(&self) -> Vec<IdSpan<'_>> {
        let mut spans: Vec<Option<(u64, i64, i64)>> = vec![None; self.symbols.len()];
        for (&code, &id) in self.symbol.iter().zip(&self.trade_id) {
            if let Some(span) = spans.get_mut(code as usize) {
                *span = Some(match *span {
                    None => (1, id, id),
                    Some((count, low, high)) => (count + 1, low.min(id), high.max(id)),
                });
            }
        }
        self.symbols
            .iter()
            .zip(spans)
            .filter_map(|(symbol, span)| {
                span.map(|(count, first, last)| IdSpan {
                    symbol,
                    count,
                    first,
                    last,
                })
            })
            .collect()
    }

    /// The ids missing between `symbol`'s lowest and highest id, as ranges, at most `limit`.
    pub fn id_gaps(&self, symbol: &str, limit: usize) -> Vec<(i64, i64)> {
        let Some(code) = self.symbols.iter().position(|s| s == symbol) else {
            return Vec::new();
        };
        let mut ids: Vec<i64> = self
            .symbol
            .iter()
            .zip(&self.trade_id)
            .filter(|(c, _)| **c as usize == code)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .map(|w| (w[0] + 1, w[1] - 1))
            .take(limit)
            .collect()
    }

    /// Rows per symbol, for the log.
    pub fn counts(&self) -> Vec<(&str, u64)> {
        let mut counts = vec![0_u64; self.symbols.len()];
        for &code in &self.symbol {
            if let Some(count) = counts.get_mut(code as usize) {
                *count += 1;
            }
        }
        self.symbols
            .iter()
            .map(String::as_str)
            .zip(counts)
            .collect()
    }
}
