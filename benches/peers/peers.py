"""Peer replay: the same market data through hftbacktest, NautilusTrader and `sapphire replay`,
each with a trivial strategy, printing events/s and ratios. Run it through run.sh.

Each engine models something different, so a rate is only comparable with what it buys:

- hftbacktest (Rust core, numba strategy): an L2 market-by-price book rebuilt from depth
  events, with feed and order latency and queue-position fill models; the strategy reads the
  best bid/ask at every feed event. Inputs are preparsed numpy arrays (parsing untimed).
- NautilusTrader BacktestEngine: the full event-driven kernel (message bus, cache, data and
  risk engines, a simulated exchange matching on an L1 book); the strategy subscribes to quote
  ticks and reads the mid. Inputs are preparsed QuoteTick/TradeTick objects (untimed).
- sapphire replay: parses the raw JSON frames (timed), maintains books, runs its agents,
  aggregation, pre-trade risk and the paper matching simulator (it trades).
- sapphire capture: the same engine from `sapphire capture convert`'s binary capture (the
  normalized events as an input journal; converted once, untimed, like hftbacktest's npz).
- sapphire books: the work of hftbacktest's case from the same capture — books, and the best
  bid/ask read after every market update (`replay --books-only`); no agents, risk or matching.
"""

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import time

import numpy as np


def synthetic_quotes(n, seed=7):
    """n quotes: a random walk on a 0.1 tick around 60,000, spreads of 1-3 ticks."""
    rng = random.Random(seed)
    mid_ticks = 600_000
    t0 = 1_723_161_600_000_000_000
    out = []
    for i in range(n):
        mid_ticks += rng.choice((-1, 0, 0, 1))
        spread = rng.choice((1, 1, 2, 3))
        bid = mid_ticks - spread // 2 - (spread % 2)
        ask = bid + spread
        out.append((t0 + i * 1_000_000, bid, ask, rng.randint(1, 5000), rng.randint(1, 5000)))
    return out


def write_recording(quotes, path):
    """The quotes as Binance USD-M bookTicker frames, `<recv_ns> <json>` lines, gzip."""
    with gzip.open(path, "wt", compresslevel=1) as f:
        for i, (ts, bid, ask, bq, aq) in enumerate(quotes):
            ms = ts // 1_000_000
            frame = (
                f'{{"stream":"btcusdt@bookTicker","data":{{"e":"bookTicker","u":{i + 1},"s":"BTCUSDT",'
                f'"b":"{bid / 10:.1f}","B":"{bq / 1000:.3f}","a":"{ask / 10:.1f}","A":"{aq / 1000:.3f}","T":{ms},"E":{ms}}}}}'
            )
            f.write(f"{ts} {frame}\n")


def hft_events_from_quotes(quotes):
    """The quotes as hftbacktest depth events: set the new bid and ask, delete a level left behind."""
    from hftbacktest.types import BUY_EVENT, DEPTH_EVENT, EXCH_EVENT, LOCAL_EVENT, SELL_EVENT, event_dtype

    rows = []
    prev_bid = prev_ask = None
    flags = EXCH_EVENT | LOCAL_EVENT | DEPTH_EVENT
    for ts, bid, ask, bq, aq in quotes:
        if prev_bid is not None and prev_bid > bid:
            rows.append((flags | BUY_EVENT, ts, ts, prev_bid / 10, 0.0, 0, 0, 0.0))
        if prev_ask is not None and prev_ask < ask:
            rows.append((flags | SELL_EVENT, ts, ts, prev_ask / 10, 0.0, 0, 0, 0.0))
        rows.append((flags | BUY_EVENT, ts, ts, bid / 10, bq / 1000, 0, 0, 0.0))
        rows.append((flags | SELL_EVENT, ts, ts, ask / 10, aq / 1000, 0, 0, 0.0))
        prev_bid, prev_ask = bid, ask
    return np.array(rows, dtype=event_dtype)


def run_hftbacktest(events, label):
    from numba import njit
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest

    @njit
    def strategy(hbt):
        feeds = 0
        acc = 0.0
        while True:
            r = hbt.wait_next_feed(False, 1_000_000_000_000)
            if r == 1:
                break
            if r == 2:
                d = hbt.depth(0)
                acc += d.best_bid + d.best_ask
                feeds += 1
            elif r != 0:
                break
        return feeds

    def build(data):
        asset = (
            BacktestAsset()
            .data(data)
            .linear_asset(1.0)
            .constant_order_latency(1_000_000, 1_000_000)
            .risk_adverse_queue_model()
            .no_partial_fill_exchange()
            .trading_value_fee_model(-0.00005, 0.0007)
            .tick_size(0.1)
            .lot_size(0.001)
        )
        return HashMapMarketDepthBacktest([asset])

    # Compile the strategy on a small slice first (numba's JIT is not the engine).
    warm = build(events[: min(len(events), 1_000)])
    strategy(warm)
    warm.close()
    hbt = build(events)
    t = time.perf_counter()
    feeds = strategy(hbt)
    elapsed = time.perf_counter() - t
    hbt.close()
    return {"engine": "hftbacktest", "input": label, "events": len(events), "unit": "depth/trade events",
            "feeds": int(feeds), "elapsed_s": elapsed, "rate": len(events) / elapsed}


def nautilus_ticks(quotes=None, recording=None):
    """QuoteTicks (and TradeTicks from a recording) for BTCUSDT-PERP.BINANCE."""
    import pandas as pd
    from nautilus_trader.persistence.wranglers import QuoteTickDataWrangler, TradeTickDataWrangler
    from nautilus_trader.test_kit.providers import TestInstrumentProvider

    instrument = TestInstrumentProvider.btcusdt_perp_binance()
    q = {"ts": [], "bid_price": [], "ask_price": [], "bid_size": [], "ask_size": []}
    tr = {"ts": [], "price": [], "quantity": [], "buyer_maker": [], "trade_id": []}
    if quotes is not None:
        for ts, bid, ask, bq, aq in quotes:
            q["ts"].append(ts)
            q["bid_price"].append(bid / 10)
            q["ask_price"].append(ask / 10)
            q["bid_size"].append(bq / 1000)
            q["ask_size"].append(aq / 1000)
    else:
        with gzip.open(recording, "rt") as f:
            for line in f:
                ts, _, frame = line.partition(" ")
                if "@bookTicker" not in frame and "@trade" not in frame:
                    continue
                d = json.loads(frame).get("data", {})
                if d.get("e") == "bookTicker":
                    q["ts"].append(int(ts))
                    q["bid_price"].append(float(d["b"]))
                    q["ask_price"].append(float(d["a"]))
                    q["bid_size"].append(float(d["B"]))
                    q["ask_size"].append(float(d["A"]))
                elif d.get("e") == "trade":
                    tr["ts"].append(int(ts))
                    tr["price"].append(float(d["p"]))
                    tr["quantity"].append(float(d["q"]))
                    tr["buyer_maker"].append(bool(d["m"]))
                    tr["trade_id"].append(str(d["t"]))
    qdf = pd.DataFrame({k: v for k, v in q.items() if k != "ts"}, index=pd.to_datetime(q["ts"], unit="ns", utc=True))
    ticks = list(QuoteTickDataWrangler(instrument).process(qdf))
    if tr["ts"]:
        tdf = pd.DataFrame({"price": tr["price"], "quantity": tr["quantity"], "buyer_maker": tr["buyer_maker"],
                            "trade_id": tr["trade_id"]}, index=pd.to_datetime(tr["ts"], unit="ns", utc=True))
        ticks += list(TradeTickDataWrangler(instrument).process(tdf))
        ticks.sort(key=lambda x: x.ts_init)
    return instrument, ticks


def run_nautilus(instrument, ticks, label):
    from decimal import Decimal

    from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
    from nautilus_trader.config import LoggingConfig, StrategyConfig
    from nautilus_trader.model.currencies import USDT
    from nautilus_trader.model.enums import AccountType, OmsType
    from nautilus_trader.model.identifiers import InstrumentId, Venue
    from nautilus_trader.model.objects import Money
    from nautilus_trader.trading.strategy import Strategy

    class MidReaderConfig(StrategyConfig, frozen=True):
        instrument_id: InstrumentId

    class MidReader(Strategy):
        """Subscribes to quotes and trades and reads the mid: the trivial strategy."""

        def __init__(self, config):
            super().__init__(config)
            self.seen = 0
            self.acc = 0.0

        def on_start(self):
            self.subscribe_quote_ticks(self.config.instrument_id)
            self.subscribe_trade_ticks(self.config.instrument_id)

        def on_quote_tick(self, tick):
            self.seen += 1
            self.acc += float(tick.bid_price) + float(tick.ask_price)

        def on_trade_tick(self, tick):
            self.seen += 1

    engine = BacktestEngine(BacktestEngineConfig(logging=LoggingConfig(log_level="ERROR"), run_analysis=False))
    engine.add_venue(Venue("BINANCE"), OmsType.NETTING, AccountType.MARGIN, [Money(1_000_000, USDT)],
                     base_currency=None, default_leverage=Decimal(1))
    engine.add_instrument(instrument)
    engine.add_data(ticks)
    strategy = MidReader(MidReaderConfig(instrument_id=instrument.id))
    engine.add_strategy(strategy)
    t = time.perf_counter()
    engine.run()
    elapsed = time.perf_counter() - t
    seen = strategy.seen
    engine.dispose()
    return {"engine": "nautilus_trader", "input": label, "events": len(ticks), "unit": "quote/trade ticks",
            "feeds": seen, "elapsed_s": elapsed, "rate": len(ticks) / elapsed}


def run_sapphire(binary, recording, label):
    r = subprocess.run([binary, "replay", "--market", "usdm", "--json", recording], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"sapphire replay failed: {r.stderr.strip()[-400:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    events, elapsed = summary["events"], summary["elapsed_s"]
    return {"engine": "sapphire replay", "input": label, "events": events, "unit": "events (frames parsed in the timing)",
            "feeds": summary.get("orders", 0), "elapsed_s": elapsed, "rate": events / max(elapsed, 1e-9)}


def capture_of(binary, recording, work):
    """sapphire's binary capture of a recording (an input journal of normalized events),
    converted once and not timed, as hftbacktest's npz conversion is not."""
    capture = os.path.join(work, os.path.basename(recording) + ".capture")
    if not os.path.isdir(capture):
        r = subprocess.run([binary, "capture", "convert", "--market", "usdm", recording, capture], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"sapphire capture convert failed: {r.stderr.strip()[-400:]}")
    return capture


def run_sapphire_books(binary, recording, label, work):
    """Equal work to hftbacktest's case: books from the capture, the best bid/ask read after
    every market update; no agents, risk or matching."""
    r = subprocess.run([binary, "replay", "--books-only", "--json", capture_of(binary, recording, work)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"sapphire replay --books-only failed: {r.stderr.strip()[-400:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    events, elapsed = summary["events"], summary["elapsed_s"]
    return {"engine": "sapphire books", "input": label, "events": events, "unit": "events (books + best bid/ask, capture)",
            "feeds": summary["tops"], "elapsed_s": elapsed, "rate": events / max(elapsed, 1e-9)}


def run_sapphire_capture(binary, recording, label, work):
    """The full engine from sapphire's binary capture."""
    capture = capture_of(binary, recording, work)
    r = subprocess.run([binary, "replay", "--json", capture], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"sapphire replay of the capture failed: {r.stderr.strip()[-400:]}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    events, elapsed = summary["events"], summary["elapsed_s"]
    return {"engine": "sapphire capture", "input": label, "events": events, "unit": "events (from the binary capture)",
            "feeds": summary.get("orders", 0), "elapsed_s": elapsed, "rate": events / max(elapsed, 1e-9)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quotes", type=int, default=1_000_000, help="synthetic quotes (0: none)")
    ap.add_argument("--recording", default="", help="a recorded Binance USD-M file (<recv_ns> <json>, gzip)")
    ap.add_argument("--sapphire", required=True, help="the sapphire binary (release build)")
    ap.add_argument("--work", required=True, help="scratch directory for generated files")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    results = []
    inputs = []
    if args.quotes > 0:
        inputs.append(("synthetic", args.quotes))
    if args.recording:
        inputs.append(("recorded", args.recording))
    for kind, what in inputs:
        if kind == "synthetic":
            label = f"{what:,} synthetic quotes"
            print(f"== {label}", flush=True)
            quotes = synthetic_quotes(what)
            path = os.path.join(args.work, f"synthetic_usdm_btcusdt_{what}.gz")
            if not os.path.exists(path):
                write_recording(quotes, path)
            hft_events = hft_events_from_quotes(quotes)
            instrument, ticks = nautilus_ticks(quotes=quotes)
            del quotes
        else:
            label = f"recorded {os.path.basename(what)}"
            print(f"== {label}", flush=True)
            path = what
            from hftbacktest.data.utils import binancefutures
            hft_events = binancefutures.convert(path, combined_stream=True)
            instrument, ticks = nautilus_ticks(recording=path)
        for run in (lambda: run_sapphire(args.sapphire, path, label),
                    lambda: run_sapphire_capture(args.sapphire, path, label, args.work),
                    lambda: run_sapphire_books(args.sapphire, path, label, args.work),
                    lambda: run_hftbacktest(hft_events, label),
                    lambda: run_nautilus(instrument, ticks, label)):
            try:
                res = run()
            except Exception as e:  # one peer failing must not hide the others
                print(f"  failed: {e}", flush=True)
                continue
            # Synthetic input: every engine saw the same quotes, so quotes/s is the common unit.
            res["quotes_rate"] = what / res["elapsed_s"] if kind == "synthetic" else None
            results.append(res)
            per_quote = f"  = {res['quotes_rate']:>12,.0f} quotes/s" if res["quotes_rate"] else ""
            print(f"  {res['engine']:<16} {res['events']:>10,} {res['unit']:<36} {res['elapsed_s']:8.2f} s "
                  f"{res['rate']:>14,.0f} /s{per_quote}", flush=True)
        by = {r["engine"]: r for r in results if r["input"] == label}
        unit = "quotes/s" if kind == "synthetic" else "events/s, each in its own unit"
        key = "quotes_rate" if kind == "synthetic" else "rate"
        for ours in ("sapphire replay", "sapphire capture", "sapphire books"):
            s = by.get(ours)
            for peer in ("hftbacktest", "nautilus_trader"):
                if s and peer in by:
                    print(f"  ratio {ours} ÷ {peer} ({unit}): {s[key] / by[peer][key]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    print(__doc__.split("\n\n", 1)[1])


if __name__ == "__main__":
    sys.exit(main())
