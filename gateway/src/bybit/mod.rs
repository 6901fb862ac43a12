//! Bybit v5 public market data (spot, linear). Being written.
