//! What orch knows of currencies for `dim_currency`: names, and which are stablecoins.
//!
//! The base and quote of a symbol always come from the exchange (exchangeInfo's `baseAsset`
//! and `quoteAsset`); this table only names them. An asset it does not know is named by its
//! ticker and counted as not a stablecoin.

/// (ticker, name, is a stablecoin).
const KNOWN: &[(&str, &str, bool)] = &[
    ("AAVE", "Aave", false),
    ("ARB", "Arbitrum", false),
    ("BNB", "BNB", false),
    ("BRL", "Brazilian Real", false),
    ("BTC", "Bitcoin", false),
    ("BUSD", "Binance USD", true),
    ("DAI", "Dai", true),
    ("DOGE", "Dogecoin", false),
    ("ETH", "Ethereum", false),
    ("EUR", "Euro", false),
    ("EURC", "Euro Coin", true),
    ("FDUSD", "First Digital USD", true),
    ("LINK", "Chainlink", false),
    ("SOL", "Solana", false),
    ("STX", "Stacks", false),
    ("TUSD", "TrueUSD", true),
    ("USD", "US Dollar", false),
    ("USD1", "World Liberty Financial USD", true),
    ("USDC", "USD Coin", true),
    ("USDP", "Pax Dollar", true),
    ("USDT", "Tether", true),
    ("XRP", "XRP", false),
];

pub fn name(ticker: &str) -> String {
    KNOWN
        .iter()
        .find(|(t, _, _)| *t == ticker)
        .map_or_else(|| ticker.to_string(), |(_, name, _)| name.to_string())
}

pub fn is_stablecoin(ticker: &str) -> bool {
    KNOWN.iter().any(|(t, _, stable)| *t == ticker && *stable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_tickers_are_named_and_others_keep_their_ticker() {
        assert_eq!(name("FDUSD"), "First Digital USD");
        assert!(is_stablecoin("FDUSD") && is_stablecoin("USDT"));
        assert!(!is_stablecoin("BTC"));
        assert_eq!(name("NEWCOIN"), "NEWCOIN");
        assert!(!is_stablecoin("NEWCOIN"));
        assert!(
            KNOWN.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no repeats"
        );
    }
}
