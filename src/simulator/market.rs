//! The simulated market: per symbol, a price random walk at a realistic level, trade sizes on
//! the symbol's lot grid, and consecutive trade ids, kept in memory for the REST endpoints.
//! A symbol can instead replay recorded trades (real ids, prices, sizes and spacing), then
//! walk on from the last recorded price.

use std::collections::{BTreeMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::decimal::Decimal;
use crate::exchange::{Instrument, Trade};

/// How many trades per symbol the simulator keeps for `historicalTrades`.
const RETAINED: usize = 2_000_000;

/// A symbol's starting price, price step and size step, in units of 10⁻⁸.
struct Profile {
    base: String,
    quote: String,
    price: i128,
    tick: i128,
    lot: i128,
}

/// Levels of late 2026 for the pipelines' symbols; others start at 1.00.
fn profile(symbol: &str) -> Profile {
    let p = |base: &str, quote: &str, price: f64, tick: i128, lot: i128| Profile {
        base: base.to_string(),
        quote: quote.to_string(),
        price: (price * 1e8) as i128,
        tick,
        lot,
    };
    match symbol {
        "BTCUSDT" => p("BTC", "USDT", 97_250.0, 1_000_000, 1_000),
        "BTCFDUSD" => p("BTC", "FDUSD", 97_240.0, 1_000_000, 1_000),
        "ETHUSDT" => p("ETH", "USDT", 3_410.0, 1_000_000, 10_000),
        // Tick 0.00001 and step 0.0001: price × quantity has 9 fractional digits.
        "ETHBTC" => p("ETH", "BTC", 0.03456, 1_000, 10_000),
        "AAVEUSDT" => p("AAVE", "USDT", 182.0, 1_000_000, 100_000),
        "STXUSDT" => p("STX", "USDT", 0.61, 10_000, 10_000_000),
        "ARBUSDT" => p("ARB", "USDT", 0.34, 10_000, 10_000_000),
        // Mercado Bitcoin's markets, served as BTC-BRL and ETH-BRL under /api/v4.
        "BTCBRL" => p("BTC", "BRL", 520_000.0, 1_000_000, 1_000),
        "ETHBRL" => p("ETH", "BRL", 18_200.0, 1_000_000, 10_000),
        _ => {
            let (base, quote) = split_symbol(symbol);
            Profile {
                base,
                quote,
                price: 100_000_000,
                tick: 10_000,
                lot: 1_000_000,
            }
        }
    }
}

/// The simulator's own listing of assets for symbols outside its table.
fn split_symbol(symbol: &str) -> (String, String) {
    for quote in ["USDT", "FDUSD", "USDC", "BRL", "BTC", "ETH"] {
        if let Some(base) = symbol.strip_suffix(quote).filter(|b| !b.is_empty()) {
            return (base.to_string(), quote.to_string());
        }
    }
    (symbol.to_string(), "USDT".to_string())
}

struct Book {
    info: Instrument,
    tick: i128,
    lot: i128,
    price: i128,
    next_id: i64,
    trades: VecDeque<Trade>,
    /// Recorded trades not released yet, with their recorded times.
    replay: VecDeque<Trade>,
    /// (recorded time of the first replayed trade, wall time it was released at), in ms.
    replay_clock: Option<(i64, i64)>,
}

impl Book {
    /// Keeps a released trade for the REST endpoints; the walk continues from its price.
    fn push(&mut self, trade: Trade) {
        self.next_id = trade.id + 1;
        self.price = trade.price.units();
        self.trades.push_back(trade);
        while self.trades.len() > RETAINED {
            self.trades.pop_front();
        }
    }
}

/// Every simulated symbol.
pub struct Market {
    books: BTreeMap<String, Book>,
    rng: StdRng,
}

impl Market {
    pub fn new(symbols: &[String], seed: u64) -> Market {
        let mut rng = StdRng::seed_from_u64(seed);
        let books = symbols
            .iter()
            .map(|symbol| {
                let profile = profile(symbol);
                let book = Book {
                    info: Instrument {
                        symbol: symbol.clone(),
                        base_asset: profile.base,
                        quote_asset: profile.quote,
                        trading: true,
                        price_step: Decimal::from_units(profile.tick).map(|d| d.to_string()),
                        size_step: Decimal::from_units(profile.lot).map(|d| d.to_string()),
                    },
                    tick: profile.tick,
                    lot: profile.lot,
                    price: profile.price,
                    // Real ids are large; start each symbol somewhere different.
                    next_id: rng.random_range(100_000_000..900_000_000),
                    trades: VecDeque::new(),
                    replay: VecDeque::new(),
                    replay_clock: None,
                };
                (symbol.clone(), book)
            })
            .collect();
        Market { books, rng }
    }

    pub fn symbols(&self) -> impl Iterator<Item = &Instrument> {
        self.books.values().map(|b| &b.info)
    }

    pub fn info(&self, symbol: &str) -> Option<&Instrument> {
        self.books.get(symbol).map(|b| &b.info)
    }

    /// The price step and the size step of `symbol`.
    pub fn steps(&self, symbol: &str) -> Option<(Decimal, Decimal)> {
        let book = self.books.get(symbol)?;
        Some((
            Decimal::from_units(book.tick)?,
            Decimal::from_units(book.lot)?,
        ))
    }

    /// The book of a `BASE-QUOTE` name, as Mercado Bitcoin and KuCoin write symbols.
    pub fn by_dashed_name(&self, name: &str) -> Option<&str> {
        let (base, quote) = name.split_once('-')?;
        self.symbols()
            .find(|s| s.base_asset == base && s.quote_asset == quote)
            .map(|s| s.symbol.as_str())
    }

    /// Queues recorded trades (ascending, consecutive ids) for `symbol`: they are released in
    /// their recorded spacing by [`Market::release_due`], or at once by [`Market::generate`].
    pub fn replay(&mut self, symbol: &str, trades: Vec<Trade>) -> Option<()> {
        let book = self.books.get_mut(symbol)?;
        let first = trades.first()?;
        book.next_id = first.id;
        book.price = first.price.units();
        book.trades.clear();
        book.replay = trades.into();
        book.replay_clock = None;
        Some(())
    }

    /// Whether `symbol` still has recorded trades to release.
    pub fn is_replaying(&self, symbol: &str) -> bool {
        self.books.get(symbol).is_some_and(|b| !b.replay.is_empty())
    }

    /// Releases the recorded trades of `symbol` whose recorded offset from the first one has
    /// elapsed since the replay started, re-timed to now; returns their id range, if any.
    pub fn release_due(&mut self, symbol: &str, now_ms: i64) -> Option<(i64, i64)> {
        let book = self.books.get_mut(symbol)?;
        let first_recorded = book.replay.front()?.time_ms;
        let (origin, started) = *book.replay_clock.get_or_insert((first_recorded, now_ms));
        let first = book.next_id;
        while let Some(next) = book.replay.front() {
            let offset = next.time_ms - origin;
            if offset > now_ms - started {
                break;
            }
            if let Some(mut trade) = book.replay.pop_front() {
                trade.time_ms = started + offset;
                book.push(trade);
            }
        }
        (book.next_id > first).then(|| (first, book.next_id - 1))
    }

    /// Appends `count` trades to `symbol`, timed up to `now_ms`; returns their id range.
    /// Recorded trades still queued for replay come first.
    pub fn generate(&mut self, symbol: &str, count: usize, now_ms: i64) -> Option<(i64, i64)> {
        let book = self.books.get_mut(symbol)?;
        let first = book.next_id;
        let replayed = count.min(book.replay.len());
        for mut trade in book.replay.drain(..replayed).collect::<Vec<_>>() {
            trade.time_ms = now_ms;
            book.push(trade);
        }
        for i in replayed..count {
            // A walk of a few ticks per trade, kept above ten ticks.
            let step = self.rng.random_range(-3..=3_i128) * book.tick;
            book.price = (book.price + step).max(book.tick * 10);
            let lots = self.rng.random_range(1..=200_i128) * self.rng.random_range(1..=50_i128);
            let qty = lots * book.lot;
            let trade = Trade::new(
                book.next_id,
                Decimal::from_units(book.price)?,
                Decimal::from_units(qty)?,
                now_ms - (count - 1 - i) as i64 / 50,
                self.rng.random_bool(0.5),
                true,
            )?;
            book.push(trade);
        }
        Some((first, book.next_id - 1))
    }

    /// Up to `limit` trades with ids from `from_id` on, ascending.
    pub fn from_id(&self, symbol: &str, from_id: i64, limit: usize) -> Option<Vec<Trade>> {
        let book = self.books.get(symbol)?;
        let oldest = book.trades.front().map_or(book.next_id, |t| t.id);
        let start = usize::try_from(from_id.saturating_sub(oldest)).unwrap_or(0);
        Some(
            book.trades
                .iter()
                .skip(start)
                .take(limit)
                .cloned()
                .collect(),
        )
    }

    /// The latest `limit` trades, ascending.
    pub fn recent(&self, symbol: &str, limit: usize) -> Option<Vec<Trade>> {
        let book = self.books.get(symbol)?;
        let skip = book.trades.len().saturating_sub(limit);
        Some(book.trades.iter().skip(skip).cloned().collect())
    }

    /// The first and last id held for `symbol`, if any trades.
    pub fn id_range(&self, symbol: &str) -> Option<(i64, i64)> {
        let book = self.books.get(symbol)?;
        Some((book.trades.front()?.id, book.trades.back()?.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_consecutive_and_pages_follow_from_id() {
        let mut market = Market::new(&["BTCUSDT".to_string()], 7);
        let (first, last) = market.generate("BTCUSDT", 2500, 1_000_000).expect("known");
        assert_eq!(last - first, 2499);
        let page = market
            .from_id("BTCUSDT", first + 1000, 1000)
            .expect("known");
        assert_eq!(page.len(), 1000);
        assert_eq!(page[0].id, first + 1000);
        assert!(page.windows(2).all(|w| w[1].id == w[0].id + 1));
        let tail = market
            .from_id("BTCUSDT", first + 2000, 1000)
            .expect("known");
        assert_eq!(tail.len(), 500);
        assert!(
            market
                .from_id("BTCUSDT", last + 1, 1000)
                .expect("known")
                .is_empty()
        );
    }

    #[test]
    fn prices_sit_on_the_tick_grid_and_quote_is_price_times_qty() {
        let symbols = ["STXUSDT".to_string(), "ETHBTC".to_string()];
        let mut market = Market::new(&symbols, 1);
        for (symbol, tick) in [("STXUSDT", 10_000), ("ETHBTC", 1_000)] {
            market.generate(symbol, 1000, 0);
            for t in market.recent(symbol, 1000).expect("known") {
                assert!(t.price.is_positive() && t.qty.is_positive());
                assert_eq!(t.price.units() % tick, 0);
                assert_eq!(t.quote_qty.units(), t.price.units() * t.qty.units());
            }
        }
        // ETHBTC's values need more than 8 fractional digits.
        let trades = market.recent("ETHBTC", 1000).expect("known");
        assert!(
            trades
                .iter()
                .any(|t| t.quote_qty.units() % 100_000_000 != 0)
        );
    }

    #[test]
    fn a_replay_keeps_recorded_ids_and_spacing_then_walks_on() {
        let mut market = Market::new(&["BTCUSDT".to_string()], 2);
        market.generate("BTCUSDT", 10, 0);
        let recorded: Vec<Trade> = (0..4_i64)
            .map(|i| {
                Trade::new(
                    500 + i,
                    Decimal::from_units(4_000_000_000_000 + i as i128).expect("price"),
                    Decimal::from_units(1_000).expect("qty"),
                    1_600_000_000_000 + i * 1000,
                    i % 2 == 0,
                    true,
                )
                .expect("trade")
            })
            .collect();
        market.replay("BTCUSDT", recorded).expect("known");
        assert_eq!(
            market.id_range("BTCUSDT"),
            None,
            "generated history is replaced"
        );
        assert_eq!(market.release_due("BTCUSDT", 50_000), Some((500, 500)));
        assert_eq!(market.release_due("BTCUSDT", 50_999), None);
        assert_eq!(market.release_due("BTCUSDT", 52_000), Some((501, 502)));
        let released = market.from_id("BTCUSDT", 500, 10).expect("known");
        let times: Vec<i64> = released.iter().map(|t| t.time_ms).collect();
        assert_eq!(
            times,
            [50_000, 51_000, 52_000],
            "recorded spacing, re-timed"
        );
        // The rest comes first when trades are asked for; then the walk goes on.
        assert_eq!(market.generate("BTCUSDT", 3, 60_000), Some((503, 505)));
        assert!(!market.is_replaying("BTCUSDT"));
        let walked = market.from_id("BTCUSDT", 504, 10).expect("known");
        let step = (walked[0].price.units() - 4_000_000_000_003).abs();
        assert!(
            step <= 3 * 1_000_000,
            "the walk starts at the last recorded price"
        );
    }
}
