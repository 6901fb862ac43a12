-- Shards: several cores (one per symbol shard) write into one database. Every row carries
-- the shard of the core that wrote it, and keys include it, so two shards' rows with the
-- same journal_seq (or the same process-local instrument id) are two rows, not one.
--
-- Existing rows were written by a single core: they get the default shard 'main' (the
-- shard a core runs as when none is configured), so that core carries on where it was,
-- cursor included. The DEFAULT is dropped afterwards: the sink always names its shard.

ALTER TABLE orders ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE orders ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE orders DROP CONSTRAINT orders_pkey;
ALTER TABLE orders ADD PRIMARY KEY (shard, journal_seq);

ALTER TABLE executions ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE executions ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE executions DROP CONSTRAINT executions_pkey;
ALTER TABLE executions ADD PRIMARY KEY (shard, journal_seq);

ALTER TABLE signals ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE signals ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE signals DROP CONSTRAINT signals_pkey;
ALTER TABLE signals ADD PRIMARY KEY (shard, journal_seq);

ALTER TABLE risk_events ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE risk_events ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE risk_events DROP CONSTRAINT risk_events_pkey;
ALTER TABLE risk_events ADD PRIMARY KEY (shard, journal_seq);

ALTER TABLE pnl_snapshots ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE pnl_snapshots ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE pnl_snapshots DROP CONSTRAINT pnl_snapshots_pkey;
ALTER TABLE pnl_snapshots ADD PRIMARY KEY (shard, journal_seq);

ALTER TABLE agent_margin ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE agent_margin ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE agent_margin DROP CONSTRAINT agent_margin_pkey;
ALTER TABLE agent_margin ADD PRIMARY KEY (shard, journal_seq);

-- Instruments: each shard's own id -> (venue, symbol) mapping, kept side by side. A row
-- that refers to an instrument joins on (shard, instrument_id); (venue, symbol) finds every
-- shard's id for a symbol.
ALTER TABLE instruments ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE instruments ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE instruments DROP CONSTRAINT instruments_pkey;
ALTER TABLE instruments ADD PRIMARY KEY (shard, id);
CREATE INDEX instruments_venue_symbol ON instruments (venue, symbol);

-- One cursor per (shard, sink name): each shard's sink follows its own output journal.
ALTER TABLE sink_cursor ADD COLUMN shard text NOT NULL DEFAULT 'main';
ALTER TABLE sink_cursor ALTER COLUMN shard DROP DEFAULT;
ALTER TABLE sink_cursor DROP CONSTRAINT sink_cursor_pkey;
ALTER TABLE sink_cursor ADD PRIMARY KEY (shard, name);
