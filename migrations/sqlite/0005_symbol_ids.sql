-- Stable surrogate ids of symbols for dim_symbol: a symbol keeps its id across runs and days.
CREATE TABLE symbol_ids (
    symbol_id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange  TEXT NOT NULL,
    symbol    TEXT NOT NULL,
    UNIQUE (exchange, symbol)
);
