-- Indexes for the dashboard (recent rows, keyset-paged by time: ORDER BY ts DESC, journal_seq
-- DESC) and the daily report (a day's range by time, per agent, per instrument).
-- B-tree indexes scan both ways, so one (ts, journal_seq) index serves newest-first paging.

CREATE INDEX orders_ts ON orders (ts, journal_seq);
CREATE INDEX orders_agent_ts ON orders (agent_id, ts);
CREATE INDEX orders_instrument_ts ON orders (instrument_id, ts);
CREATE INDEX orders_client_order_id ON orders (client_order_id);

CREATE INDEX executions_ts ON executions (ts, journal_seq);
-- Trades: the fills only.
CREATE INDEX executions_fills_ts ON executions (ts, journal_seq)
    WHERE kind IN ('fill', 'partial_fill');
CREATE INDEX executions_agent_ts ON executions (agent_id, ts);
CREATE INDEX executions_instrument_ts ON executions (instrument_id, ts);
CREATE INDEX executions_client_order_id ON executions (client_order_id);

CREATE INDEX signals_ts ON signals (ts, journal_seq);
CREATE INDEX signals_agent_ts ON signals (agent_id, ts);
CREATE INDEX signals_instrument_ts ON signals (instrument_id, ts);

CREATE INDEX risk_events_ts ON risk_events (ts, journal_seq);
CREATE INDEX risk_events_kind_ts ON risk_events (kind, ts);
CREATE INDEX risk_events_agent_ts ON risk_events (agent_id, ts);

-- Totals (agent_id NULL) and per-agent series.
CREATE INDEX pnl_snapshots_total_ts ON pnl_snapshots (ts) WHERE agent_id IS NULL;
CREATE INDEX pnl_snapshots_agent_ts ON pnl_snapshots (agent_id, ts) WHERE agent_id IS NOT NULL;

CREATE INDEX agent_margin_agent_ts ON agent_margin (agent_id, ts);
CREATE INDEX agent_margin_ts ON agent_margin (ts);
