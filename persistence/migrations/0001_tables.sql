-- Sapphire's history tables, written by the Postgres sink from the output journal.
--
-- Conventions (persistence/src/pg/mod.rs has the reasons):
-- * journal_seq: the output-journal record the row came from; the primary key of every
--   journal-fed table, so a replayed record can never become a second row.
-- * engine_seq: the inbound ring sequence that caused the output.
-- * ts timestamptz (microseconds, for humans and date_trunc) beside ts_ns bigint (the exact
--   unix-ns event time, for ordering).
-- * Fixed-point values as NUMERIC with the engine's scale: prices and money 9 decimals,
--   quantities 8. Exact: written from the raw integers, never through floating point.
-- * u64 ids (client order ids, intent ids, signal ids) as bigint holding the same 64 bits
--   (ids at or above 2^63 read as negative numbers; none is produced with the default epoch).
-- * Enumerations as the engine's snake_case labels.
-- * No foreign keys: the sink may write rows before the instrument list is upserted.

CREATE TABLE instruments (
    id              bigint PRIMARY KEY,
    symbol          text NOT NULL,
    venue           text NOT NULL,
    market          text NOT NULL,
    tick_size       numeric(28, 9) NOT NULL,
    lot_size        numeric(28, 8) NOT NULL,
    min_notional    numeric(28, 9) NOT NULL,
    price_precision smallint NOT NULL,
    qty_precision   smallint NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    journal_seq     bigint PRIMARY KEY,
    engine_seq      bigint NOT NULL,
    ts              timestamptz NOT NULL,
    ts_ns           bigint NOT NULL,
    origin_recv_ns  bigint NOT NULL,
    client_order_id bigint NOT NULL,
    intent_id       bigint NOT NULL,
    instrument_id   bigint NOT NULL,
    agent_id        integer NOT NULL,
    action          text NOT NULL,
    side            text NOT NULL,
    order_type      text NOT NULL,
    tif             text NOT NULL,
    reduce_only     boolean NOT NULL,
    price           numeric(28, 9) NOT NULL,
    qty             numeric(28, 8) NOT NULL
);

CREATE TABLE executions (
    journal_seq     bigint PRIMARY KEY,
    engine_seq      bigint NOT NULL,
    ts              timestamptz NOT NULL,
    ts_ns           bigint NOT NULL,
    recv_ns         bigint NOT NULL,
    client_order_id bigint NOT NULL,
    instrument_id   bigint NOT NULL,
    agent_id        integer NOT NULL,
    kind            text NOT NULL,
    side            text NOT NULL,
    reason          text NOT NULL,
    liquidity       text NOT NULL,
    price           numeric(28, 9) NOT NULL,
    last_qty        numeric(28, 8) NOT NULL,
    leaves_qty      numeric(28, 8) NOT NULL,
    fee             numeric(28, 9) NOT NULL
);

CREATE TABLE signals (
    journal_seq     bigint PRIMARY KEY,
    engine_seq      bigint NOT NULL,
    ts              timestamptz NOT NULL,
    ts_ns           bigint NOT NULL,
    recv_ns         bigint NOT NULL,
    signal_id       bigint NOT NULL,
    instrument_id   bigint NOT NULL,
    agent_id        integer NOT NULL,
    strength_bps    integer NOT NULL,
    confidence_bps  integer NOT NULL,
    ttl_ns          bigint NOT NULL,
    taken           boolean NOT NULL
);

-- Refusals (event = 'refusal', kind = the reject reason) and guard alerts (event = 'alert',
-- kind = the alert kind, value = its kind-specific value).
CREATE TABLE risk_events (
    journal_seq     bigint PRIMARY KEY,
    engine_seq      bigint NOT NULL,
    ts              timestamptz NOT NULL,
    ts_ns           bigint NOT NULL,
    event           text NOT NULL,
    kind            text NOT NULL,
    agent_id        integer NOT NULL,
    instrument_id   bigint,
    intent_id       bigint,
    side            text,
    price           numeric(28, 9),
    qty             numeric(28, 8),
    value           bigint
);

-- Periodic PnL: agent_id NULL is the portfolio total, otherwise one agent's figures.
CREATE TABLE pnl_snapshots (
    journal_seq     bigint PRIMARY KEY,
    engine_seq      bigint NOT NULL,
    ts              timestamptz NOT NULL,
    ts_ns           bigint NOT NULL,
    agent_id        integer,
    realized        numeric(28, 9) NOT NULL,
    unrealized      numeric(28, 9) NOT NULL,
    fees            numeric(28, 9) NOT NULL,
    capital         numeric(28, 9) NOT NULL,
    equity          numeric(28, 9) NOT NULL,
    gross_exposure  numeric(28, 9) NOT NULL
);

-- An agent's margin at a timer: capital is its budget, margin_used = gross_exposure / leverage
-- (truncated like the risk engine does); NULL where the arithmetic would overflow.
CREATE TABLE agent_margin (
    journal_seq      bigint PRIMARY KEY,
    engine_seq       bigint NOT NULL,
    ts               timestamptz NOT NULL,
    ts_ns            bigint NOT NULL,
    agent_id         integer NOT NULL,
    capital          numeric(28, 9) NOT NULL,
    equity           numeric(28, 9) NOT NULL,
    gross_exposure   numeric(28, 9) NOT NULL,
    leverage         bigint NOT NULL,
    margin_used      numeric(28, 9),
    margin_remaining numeric(28, 9),
    utilization      numeric GENERATED ALWAYS AS (
        CASE WHEN capital > 0 THEN round(margin_used / capital, 6) END
    ) STORED
);

-- Where each sink is in its journal: the next journal sequence to write. Updated in the same
-- transaction as the rows, so rows and cursor commit together or not at all.
CREATE TABLE sink_cursor (
    name        text PRIMARY KEY,
    next_seq    bigint NOT NULL CHECK (next_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
